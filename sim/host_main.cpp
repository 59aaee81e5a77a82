// The simulation host's main loop (sim/host.py): the Verilated harness ``Vhost`` clocked from here,
// one program per request on stdin, one answer per request on stdout.
//
//   run N_CMD N_DIN MAX_CYCLES JITTER   read cmd.hex / din.hex (in the working folder) and stream
//                                them through the top until the harness is done, then write the
//                                result words to dout.hex; JITTER 1: random gaps on the data and
//                                random back-pressure on the results
//   -> done CYCLES N_OUT RTL_SECONDS
//   -> timeout CMD_PTR DIN_PTR N_OUT   (the harness is then left as it stopped)
//
// Each cycle is two evaluations, clk high then low: no --timing scheduler and no VPI callback runs
// between them, which is what cocotb's main loop cost (sim/host.py).
#include <chrono>
#include <cstdio>
#include <memory>

#include "Vhost.h"
#include "verilated.h"

int main(int argc, char** argv) {
    auto context = std::make_unique<VerilatedContext>();
    context->commandArgs(argc, argv);
    auto host = std::make_unique<Vhost>(context.get());
    auto cycle = [&] {
        host->clk = 1;
        host->eval();
        host->clk = 0;
        host->eval();
    };
    host->clk = 0;
    host->eval();
    char line[256];
    unsigned long n_cmd, n_din, max_cycles, jitter;
    while (std::fgets(line, sizeof line, stdin)) {
        if (std::sscanf(line, "run %lu %lu %lu %lu", &n_cmd, &n_din, &max_cycles, &jitter) != 4) {
            std::printf("error: expected 'run N_CMD N_DIN MAX_CYCLES JITTER', got %s", line);
            return 2;
        }
        host->jitter = jitter != 0;
        host->n_cmd = n_cmd;
        host->n_din = n_din;
        host->load = 1;
        cycle();
        host->load = 0;
        host->go = 1;
        const auto start = std::chrono::steady_clock::now();
        unsigned long cycles = 0;
        while (!host->done && cycles <= max_cycles) {
            cycle();
            ++cycles;
        }
        const double rtl_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (!host->done) {
            std::printf("timeout %u %u %u\n", host->cmd_ptr, host->din_ptr, host->n_out);
            std::fflush(stdout);
            continue;
        }
        host->go = 0;
        cycle();
        if (host->n_out) {
            host->dump = 1;
            cycle();
            host->dump = 0;
        }
        std::printf("done %llu %u %.9f\n", static_cast<unsigned long long>(host->cycles), host->n_out, rtl_seconds);
        std::fflush(stdout);
    }
    host->final();
    return 0;
}
