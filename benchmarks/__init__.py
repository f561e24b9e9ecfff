"""Scripts that measure and print numbers: `python -m benchmarks.NAME --help` from the root.

train_step (the contract of `docs/design.md`: one train step's speed, FLOPs and utilisation),
compile (time to first step), scaling (throughput over device counts), input_pipeline (host
images/s per core), flax_example (the google/flax examples/imagenet train step, timed the same
way as ours), torchvision_step (torchvision's train step on PyTorch, timed the same way; the
parity extra) and reference_figures (the torchvision/timm figures of `archs.references`).
"""
