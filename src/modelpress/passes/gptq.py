"""GPTQ for one linear layer (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", Algorithm 1).

Columns are quantized in order; after each, the error it leaves is spread over the columns not
yet quantized, weighted by the inverse Hessian of the layer's reconstruction loss
`||W X - Q X||^2` (H = 2 X X^T over the calibration inputs). As in the paper the inverse is
taken once, through its Cholesky factor, and the updates are applied lazily per block of
columns. Blocks are whole quantization groups, so each group's scale and zero point are
computed from weights that already carry every earlier column's correction. Inside a block the
lazy update is applied once more per group (or per 32 columns): a column's error reaches the rest
of its group at once and the rest of the block in one matrix product when the group is done, the
same sums in fewer passes over memory. The weights are held transposed, so that the column being
quantized is contiguous.
`tests/test_gptq.py` checks this against a plain column-by-column transcription of the
paper's update rule.
"""

from __future__ import annotations

from modelpress.quantized import Grid

INNER = 32  # columns whose errors are applied together inside a block, when a row is one group


class Hessian:
    """Running H = 2/n * sum(x x^T) over the rows a linear layer sees.

    Accumulated in float32, as the paper's reference implementation does (its cost is most of a
    GPTQ pass: tokens x columns^2); `gptq` works in float64 from there. (In float32, as the reference code
    works, it took half the time on the SmolLM2 example's layers, but float rounding then moved a third of the
    codes through the 30 layers: one phrase of the eval split answered otherwise, under the example's 0.95 bar.)"""

    def __init__(self, columns: int):
        import torch

        self.h = torch.zeros(columns, columns, dtype=torch.float32)
        self.rows = 0

    def add(self, x) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.h.dtype)
        total = self.rows + x.shape[0]
        self.h *= self.rows / total
        self.h += (2.0 / total) * x.T @ x
        self.rows = total


def gptq(weight, h, grid: Grid, damp: float = 0.01, act_order: bool = False, block: int = 128):
    """GPTQ codes (out, in), scales and zeros (out, groups) of `weight` under Hessian `h` (in, in)."""
    import torch

    w = weight.detach().double().clone()
    h = h.double().clone()
    columns = w.shape[1]
    dead = torch.diag(h) == 0  # inputs never active: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = None
    if act_order:  # quantize the columns with the largest inputs first (one group per row only)
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(columns, dtype=h.dtype)
    # the upper Cholesky factor of H^-1 holds, row by row, the updates of the paper's Algorithm 1
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    size = columns if grid.group_size == -1 else grid.group_size
    block = max(size, block - block % size) if grid.group_size != -1 else block
    inner = min(size if grid.group_size != -1 else INNER, block)
    wt = w.T.contiguous()  # (in, out): row `col` is the column being quantized
    codes = torch.zeros_like(wt)
    scales, zeros = [], []
    scale = zero = None
    if grid.group_size == -1:
        scale, zero = grid.qparams(w)
        scales, zeros = [scale], [zero]
    for start in range(0, columns, block):
        end = min(start + block, columns)
        err = torch.zeros(end - start, wt.shape[1], dtype=wt.dtype)
        for first in range(start, end, inner):
            last = min(first + inner, end)
            for col in range(first, last):
                if grid.group_size != -1 and col % size == 0:
                    scale, zero = grid.qparams(wt[col:col + size].T)
                    scales.append(scale)
                    zeros.append(zero)
                q = grid.quantize(wt[col][:, None], scale, zero)[:, 0]
                codes[col] = q
                e = (wt[col] - grid.dequantize(q[:, None], scale, zero)[:, 0]) / hinv[col, col]
                wt[col + 1:last] -= hinv[col, col + 1:last, None] * e[None, :]
                err[col - start] = e
            wt[last:end] -= hinv[first:last, last:end].T @ err[first - start:last - start]
        wt[end:] -= hinv[start:end, end:].T @ err
    codes = codes.T
    if perm is not None:
        codes = codes[:, torch.argsort(perm)]
    return codes.float(), torch.stack(scales, dim=1).float(), torch.stack(zeros, dim=1).float()
