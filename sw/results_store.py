"""The results store of a sharded evaluation (``run_vit.py --results DIR``): one SQLite file,
``DIR/results.sqlite``, holding one record per image and one per shard.

SQLite because it is in the standard library, one file, readable by any tool (``sqlite3``,
pandas' ``read_sql``), and its transactions make every write all-or-nothing: a shard's records
and its summary are committed together, so a run killed at any moment (Ctrl-C, a lost node)
leaves only whole shards behind, and a rerun resumes from exactly those.

Tables:

* ``meta(key, value)``: ``config``, the JSON of what the records depend on (the integer model's
  fingerprint, the backend, the accelerator configuration, the blocks run, the mode). A run
  whose config differs refuses the folder.
* ``images``: ``image`` (index in the test set, the primary key: an image is stored at most once),
  ``label``, the class predicted by the float, fake-quant and integer-only models and by the
  backend (``float_pred``, ``fakequant_pred``, ``integer_pred``, ``backend_pred``: NULL when the
  backend ran a partial model), ``bit_exact``, ``mismatches``, ``elements``
  (compared), ``cycles`` (the shard's cycles over its images: the images of a shard run in one
  batch and share its weight loads; NULL on the ``ref`` backend), ``image_sha`` (of the normalized
  image: a rerun checks a sample of the stored images, sw/shards.py), ``shard``.
* ``shards``: ``shard`` (primary key), ``images`` (JSON list of indices), ``summary`` (JSON: cycles,
  per-op statistics, host-link bytes, per-tensor comparison, simulation seconds, worker host).

Only the driver writes; workers return their shard's records to it.
"""

import hashlib
import json
import sqlite3
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["StoreError", "ResultsStore", "image_sha"]

FILE = "results.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, images TEXT NOT NULL, summary TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image INTEGER PRIMARY KEY, label INTEGER NOT NULL, float_pred INTEGER NOT NULL, fakequant_pred INTEGER NOT NULL,
    integer_pred INTEGER NOT NULL, backend_pred INTEGER, bit_exact INTEGER NOT NULL,
    mismatches INTEGER NOT NULL, elements INTEGER NOT NULL, cycles REAL, image_sha TEXT NOT NULL,
    shard INTEGER NOT NULL REFERENCES shards(shard));
"""
COLUMNS = ("image", "label", "float_pred", "fakequant_pred", "integer_pred", "backend_pred", "bit_exact", "mismatches",
           "elements", "cycles", "image_sha", "shard")


class StoreError(ValueError):
    """A results folder this run cannot use, with the reason and what to do."""


def image_sha(image) -> str:
    """A short digest of one image (a tensor)."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()[:16]


class ResultsStore:
    """The records of one evaluation config; `folder` None keeps them in memory (a run without
    ``--results``: the report is computed from records either way)."""

    def __init__(self, folder: Path | None, config: dict):
        self.folder = folder
        self._lock = None
        if folder is None:
            self.db = sqlite3.connect(":memory:")
        else:
            folder = Path(folder)  # run_vit.py's --results has refused a file
            folder.mkdir(parents=True, exist_ok=True)
            self._lock = FileLock(str(folder / ".lock"))
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                raise StoreError(f"--results {folder}: another run is using this folder (its lock file "
                                 f"{folder / '.lock'} is held); wait for it or choose another folder") from None
            self.db = sqlite3.connect(folder / FILE)
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            self.close()
            raise StoreError(f"--results {folder}: {folder / FILE} is not a results store ({e})") from None
        self._claim(config)

    def _claim(self, config: dict) -> None:
        want = json.dumps(config, sort_keys=True)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('config', ?)", (want,))
            return
        have = json.loads(row[0])
        if have != config:
            diff = ", ".join(f"{k}: {have.get(k)!r} there, {config.get(k)!r} now"
                             for k in sorted(set(have) | set(config)) if have.get(k) != config.get(k))
            self.close()
            raise StoreError(f"--results {self.folder} holds results of a different model or configuration ({diff}); "
                             "use another folder for this run, or delete that one")

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ------------------------------------------------------------------------------------

    def add_shard(self, images: list[int], records: list[dict], summary: dict) -> int:
        """Store one shard's records and summary in one transaction; its shard number."""
        with self.db:  # commits both or neither
            cur = self.db.execute("INSERT INTO shards (images, summary) VALUES (?, ?)",
                                  (json.dumps(images), json.dumps(summary)))
            shard = cur.lastrowid
            self.db.executemany(f"INSERT INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                [tuple({**r, "shard": shard}[c] for c in COLUMNS) for r in records])
        return shard

    # -- reading ------------------------------------------------------------------------------------

    def stored(self, images) -> set[int]:
        """The indices among `images` whose records are stored."""
        return set(images) & {row[0] for row in self.db.execute("SELECT image FROM images")}

    def check_images(self, shas: dict[int, str]) -> None:
        """Refuse the folder when a stored index of `shas` (index: image_sha) holds another image:
        the test set changed under it."""
        stored = dict(self.db.execute("SELECT image, image_sha FROM images"))
        changed = [i for i, sha in shas.items() if i in stored and stored[i] != sha]
        if changed:
            raise StoreError(f"--results {self.folder}: image {changed[0]} differs from the image stored under that "
                             "index (different --data, --synthetic or selection?); use another folder for this run")

    def records(self, images) -> list[dict]:
        """The stored records of `images`, in index order."""
        wanted = set(images)
        rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM images ORDER BY image")
        return [{**dict(zip(COLUMNS, row)), "bit_exact": bool(row[COLUMNS.index("bit_exact")])}
                for row in rows if row[0] in wanted]

    def summaries(self, images) -> list[dict]:
        """The summaries of the shards that hold any of `images`, each with its ``images``."""
        wanted = set(images)
        out = []
        for ids, summary in self.db.execute("SELECT images, summary FROM shards ORDER BY shard"):
            ids = json.loads(ids)
            if wanted.intersection(ids):
                out.append({**json.loads(summary), "images": ids})
        return out
