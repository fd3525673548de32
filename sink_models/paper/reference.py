"""The paper's reference numbers that the zoo's results are set beside, each with where it comes from (the paper,
"A Unifying View of Attention Sinks: Two Algorithms, Two Solutions", 2026, and its public code,
KempnerInstitute/attention_sink; definitions in docs/science.md)."""

# docs/science.md section 8: LeJEPA ViT-L, sinks per image (NOP, broadcast); "gating" is the elementwise gate.
PAPER_SINKS = {"plain": (0.25, 0.09), "gated": (0.00, 3.80), "gp-penalty": (0.00, 0.04)}
# docs/science.md section 8: mIoU (%) of a linear probe, ADE20K / VOC, mean of 3 seeds; the paper has no
# global-pathway arm.
PAPER_MIOU = {"plain": (16.6, 43.8), "gated": (18.6, 48.0), "gated-headwise": (18.5, 47.6), "reg": (18.7, 49.9),
              "gated-reg": (20.0, 52.2)}  # fmt: skip

# The paper's toy notebooks (KempnerInstitute/attention_sink, toy/notebooks/{noop,broadcast}_causal_intervention.ipynb,
# stored outputs; d = 64, L = 32, one seed), (task, layer): the RMS of the output change per edit in the order of
# paper.interventions.EDITS (absolute: the NOP queries' outputs have RMS ~1, the broadcast task's ~1.4), the donor
# payload cosine, and the task MSE before / with the sink value zeroed.
PAPER_TOY = {
    ("nop", 1): ((0.0078, None, 0.0, 0.979, 0.4995, None), None, (0.0187, 0.0187)),
    ("broadcast", 1): ((2.07, None, 0.232, 0.441, 0.725, 0.065), 0.162, (0.0481, 4.37)),
    ("broadcast", 2): ((1.72, None, 1.36, 1.39, 1.46, 0.026), 0.944, (0.0481, 3.07)),
}

# The paper's controlled broadcast arms (docs/science.md section 8; KempnerInstitute/attention_sink,
# toy/global_pathway/README.md, means over 5 seeds at d = 64, L = 32, 30,000 steps): name -> (variant, penalised,
# numbers in the order of synthetic.ARM_COLUMNS, None where the arm has no pathway).
PAPER_ARMS = {
    "attention": ("plain", False, (0.1397, 0.888, 0.906, 2.906, None, 0.962, None)),
    "+ global": ("gp", False, (0.1402, 0.103, 0.908, 2.875, 0.515, 0.957, 0.203)),
    "+ global + penalty": ("gp", True, (0.1441, 0.062, 0.057, 0.004, 1.644, -0.035, 0.892)),
}
