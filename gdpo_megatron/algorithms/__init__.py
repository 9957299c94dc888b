"""Pure tensor math: advantage estimators, policy losses, the paper's analysis.

House rule: nothing here imports Ray or megatron-core, so all of it is testable in
microseconds on any machine.
"""
