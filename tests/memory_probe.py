"""Peak memory of one optimizer step, measured in a process of its own (run by tests/test_memory.py).

Usage: python memory_probe.py KIND, with KIND one of adam, alsals-searched, alsals-amortized,
alsals-searched-lbfgs. Prints the peak resident memory the step adds above what the process held
before it, in bytes per parameter (Linux only: the peak is reset through /proc/self/clear_refs).

Run it with ``MALLOC_MMAP_THRESHOLD_=131072`` (test_memory.py does): glibc then maps every tensor of
this size when it is created and unmaps it when it is freed, so the resident size follows the live
tensors. The parameters are two tensors of 2M fp32 entries; the loss, a plain sum, needs no
activation memory.
"""

import gc
import sys

import torch

import alsals


def rss_and_peak():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def main(kind):
    torch.set_num_threads(1)
    params = [torch.nn.Parameter(torch.full((2 * 2**20,), 0.5)) for _ in range(2)]
    numel = sum(p.numel() for p in params)

    def closure():
        return sum(p.sum() for p in params) * 1e-6

    if kind == "adam":
        opt = torch.optim.Adam(params, foreach=True)

        def step():
            opt.zero_grad()
            closure().backward()
            opt.step()
    else:
        # v0.1's one-way search: on this flat toy loss the two-way search keeps finding a larger step
        # and so searches at every step; the amortized step is the same code either way
        opt = alsals.ALSALS(params, preset="v0.1", amortized=kind == "alsals-amortized", initial_step_size=1e-3)

        def step():
            opt.step(closure)

    for _ in range(12):  # state created, past the warm-up searches
        step()
    if kind == "alsals-amortized":
        assert opt.search_state["steps_until_search"] > 0
    for p in params:  # measure from the same point for every kind: no gradients held
        p.grad = None
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before, _ = rss_and_peak()
    step()
    _, peak = rss_and_peak()
    if kind.startswith("alsals"):
        expected = "amortized" if kind == "alsals-amortized" else "accepted"
        assert opt.search_state["last_status"] == expected, opt.search_state["last_status"]
    print((peak - before) / numel)


if __name__ == "__main__":
    main(sys.argv[1])
