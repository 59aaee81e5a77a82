// Simulation model of the Lattice ECP5 DP16KD block RAM, for the subset hw/bram.py instantiates:
// port A only writes and port B only reads (WEB, DIB and DOA are not used), both ports in one
// configuration: DATA_WIDTH 18, 9, 4, 2 or 1 (1024 x 18, 2048 x 9, 4096 x 4, 8192 x 2, 16384 x 1)
// with the word address on AD[13:4], AD[13:3], AD[13:2], AD[13:1] or AD[13:0] (at x18, ADA1 and
// ADA0 enable the writes of the high and low 9 bits); chip selects decoded as 0b000; RESETMODE
// SYNC; REGMODE_A NOREG and REGMODE_B OUTREG: port B's data leaves through its output register,
// enabled by OCEB, one edge after the read (CEB). Any other setting stops the simulation rather
// than being modelled wrongly (string parameters are compared only with the values hw/bram.py
// passes: Verilator warns when a literal of another length is compared). A read of the address
// port A writes at the same edge returns the old word (on the device the result is undefined).
// The contents and both read registers start at zero. Yosys ships this primitive as a black box
// only (lattice/cells_sim_ecp5.v).
module DP16KD #(
    parameter DATA_WIDTH_A = 18,
    parameter DATA_WIDTH_B = 18,
    parameter REGMODE_A = "NOREG",
    parameter REGMODE_B = "NOREG",
    parameter RESETMODE = "SYNC",
    parameter ASYNC_RESET_RELEASE = "SYNC",
    parameter CSDECODE_A = "0b000",
    parameter CSDECODE_B = "0b000",
    parameter WRITEMODE_A = "NORMAL",
    parameter WRITEMODE_B = "NORMAL",
    parameter GSR = "ENABLED"
) (
    input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9,
        DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0,
    input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
    input CEA, OCEA, CLKA, WEA, RSTA,
    input CSA2, CSA1, CSA0,
    output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9,
        DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2, DOA1, DOA0,
    input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9,
        DIB8, DIB7, DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0,
    input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
    input CEB, OCEB, CLKB, WEB, RSTB,
    input CSB2, CSB1, CSB0,
    output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9,
        DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2, DOB1, DOB0
);
    localparam W = DATA_WIDTH_A;
    localparam SHIFT = W == 18 ? 4 : W == 9 ? 3 : W == 4 ? 2 : W == 2 ? 1 : 0;
    localparam DEPTH = 16384 >> SHIFT;

    initial begin
        if (DATA_WIDTH_A != DATA_WIDTH_B || (W != 18 && W != 9 && W != 4 && W != 2 && W != 1) ||
            REGMODE_A != "NOREG" || REGMODE_B != "OUTREG" || RESETMODE != "SYNC" ||
            CSDECODE_A != "0b000" || CSDECODE_B != "0b000")
            $fatal(1, "DP16KD model: a setting outside the subset its header lists");
    end

    wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0};
    wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0};
    wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9,
                       DIA8, DIA7, DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
    wire [13 - SHIFT:0] word_a = ada[13:SHIFT];
    wire [13 - SHIFT:0] word_b = adb[13:SHIFT];
    wire write = CEA && WEA && {CSA2, CSA1, CSA0} == 3'b000;
    wire read = CEB && {CSB2, CSB1, CSB0} == 3'b000;

    reg [W - 1:0] mem [0:DEPTH - 1];
    reg [W - 1:0] latch_b = {W{1'b0}}, reg_b = {W{1'b0}};
    integer i;
    initial begin
        for (i = 0; i < DEPTH; i = i + 1) mem[i[13 - SHIFT:0]] = {W{1'b0}};
    end

    generate
        if (W == 18) begin : x18
            always @(posedge CLKA) begin
                if (write && ADA0) mem[word_a][8:0] <= dia[8:0];
                if (write && ADA1) mem[word_a][17:9] <= dia[17:9];
            end
        end else begin : narrow
            always @(posedge CLKA) begin
                if (write) mem[word_a] <= dia[W - 1:0];
            end
        end
    endgenerate

    always @(posedge CLKB) begin
        if (RSTB) latch_b <= {W{1'b0}};
        else if (read) latch_b <= mem[word_b];
        if (RSTB) reg_b <= {W{1'b0}};
        else if (OCEB) reg_b <= latch_b;
    end

    wire [17:0] dob;
    assign dob[W - 1:0] = reg_b;
    generate
        if (W < 18) begin : pad
            assign dob[17:W] = {18 - W{1'b0}};
        end
    endgenerate
    assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5, DOB4, DOB3, DOB2,
            DOB1, DOB0} = dob;
    assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5, DOA4, DOA3, DOA2,
            DOA1, DOA0} = 18'd0;  // port A only writes
endmodule
