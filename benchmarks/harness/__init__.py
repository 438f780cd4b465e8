"""The benchmarks' shared harness: how a figure is measured, once, for every comparison.

Nothing here runs on its own; a comparison file (``benchmarks/compare_sgd.py``,
``benchmarks/host_overhead.py``) declares what it compares and calls these modules:

* ``params``     parameter sets as shapes, and fp32 tensors with gradients made from them
* ``methods``    methods as data: a name, how to build the optimizer and its scheduler, whether it
                 can run on this device (and why not)
* ``timing``     seconds per call; rounds in alternating method order; median and p20/p80 spread
* ``bandwidth``  bytes moved per step / time, against the device's measured copy bandwidth
* ``memory``     peak extra memory of one step (CPU allocator events, CUDA peak statistics)
* ``launches``   CUDA kernel launches and host syncs per step
* ``cell``       one (parameter set, schedule) cell: every method measured side by side
* ``suite``      a comparison's cells, each in its own process, into one report dict
* ``env``        device, versions, threads, CPU model, git commit: what the figures were taken on
* ``report``     the table, the JSON file (never overwriting one), progress on stderr
* ``plot``       the PNG
* ``cli``        the command line every comparison shares (``benchmarks/run.py``)
* ``_internal``  the one place that reaches into fused_lr's private modules

Run a comparison from the repository root, e.g. ``python benchmarks/run.py --quick``.
"""
