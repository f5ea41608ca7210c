"""Benchmarks of loretta_ds, run from the checkout's root (they are not part of the installed package).

    python -m benchmarks.bench ...        every contender in one process: step time, memory, sizes
    bash benchmarks/comm.sh               ZeRO-3 communication and step time through the trainer
    bash benchmarks/packing.sh            padded vs packed batches on chat data
    bash benchmarks/throughput.sh         loretta_ds vs HF Trainer + PEFT LoRA on chat data
    bash benchmarks/gpu.sh                the accelerator benchmark

``harness/`` holds the in-process benchmark's parts (models, contenders, meters, reports) and the
communication probe; ``results/`` the measured tables that docs/benchmarks.md quotes.
"""
