"""Stage 4, training: LR schedules, optimizers, EMA, metrics, one step and evaluation, the phase loop ``fit``, the LR
range test and auto-LR, data-parallel plumbing, compile statistics. Imports the stages before it, never ``outputs``."""
