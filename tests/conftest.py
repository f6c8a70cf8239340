"""Shared test set-up.

The tests work on tiny tensors. With more than one intra-op thread, torch's OpenMP pool spends
milliseconds waking for kernels that take microseconds (measured: softmax of a [16, 4] tensor,
2.5 ms with 2 threads on a busy 2-core machine vs 1.8 us with 1), so the suite pins one thread.
"""

import torch

torch.set_num_threads(1)
