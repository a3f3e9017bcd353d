"""Neural-collapse metrics NC1..NC4 (Papyan, Han, Donoho 2020) and their multi-label form (Li et al. 2024).

Conventions (algorithms.md §4-5), all in float64 on training features:
- Only multiplicity-1 rows (exactly one distinct label) enter the class statistics; classes never seen are
  left out, so C below is the number of seen classes. mu_G (`global_mean`): "class_means" (default) is the
  mean of the class means, (1/C) sum_c mu_c, so an exactly collapsed simplex ETF scores 0 whatever the
  class counts; "samples" is the mean of the rows' features, sum_c n_c mu_c / N (Papyan et al.'s mu_G,
  equal to the former only for balanced classes). M~ = [mu_c - mu_G] (centred means).
- Sigma_W = (1/N) sum_i (h_i - mu_c)(h_i - mu_c)^T, streamed as (sum_i h_i h_i^T - sum_c n_c mu_c mu_c^T) / N
  (fine in float64 unless the within-class spread is below ~1e-7 of the feature norm).
- NC1 = (1/C) Tr(Sigma_W Sigma_B^+): Sigma_B^+ keeps the top min(C-1, d) eigenpairs of Sigma_B, minus any
  eigenvalue below `rcond` * the largest (the reference code's svds(k=C-1) plus a cutoff).
- NC2: equinorm = std/mean of ||mu~_c|| (and ||w_c||); equiangularity = std of off-diagonal cosines;
  maximal angle = mean of |cos + 1/(C-1)|; `nc2_*_zhu` = ||G/||G||_F - (I - 11^T/C)/sqrt(C-1)||_F for
  G = M~^T M~ (centred means) and G = W W^T. Cosine statistics use all pairs when C <= `max_pairs_classes`,
  else `num_pairs` class pairs drawn with `seed` (the Zhu forms then use the same sampled entries).
- NC3 = || W^T/||W||_F - M~/||M~||_F ||_F^2.
- NC4 = fraction of rows where argmax_c (w_c.h + b_c) != argmin_c ||h - mu_c|| (argmax over all classes of
  `weight`, argmin over the seen means). `compute(weight, bias)` reports it on a uniform sample of up to
  `nc4_rows` multiplicity-1 rows kept while streaming (this process's rows; the class means are whatever
  `load_state` gave, e.g. all-reduced; cost nc4_rows x C x d); `ncc_mismatch` does it exactly on a second
  pass over any stream.
- Tag-wise statistics (multi-label, label sets of any size >= 2, with the scale alpha_|S|): `tagwise`.
"""

from __future__ import annotations

import torch

from xlc.errors import ConfigError
from xlc.eval.tagwise import LabelSetTable

GLOBAL_MEANS = ("class_means", "samples")


def _targets_2d(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels).long()
    return labels[:, None] if labels.dim() == 1 else labels


class NCAccumulator:
    """Streams per-class feature sums over training batches; `compute()` returns the NC metrics as floats.

    `update(features [B, d], labels [B] or [B, M] padded with -1)`; rows with >= 2 distinct labels feed the
    tag-wise statistics (at most `max_label_sets` distinct sets are tracked), and a seeded uniform sample of
    `nc4_rows` single-label rows is kept for NC4. `state()`/`load_state()` give the raw float64 sums in a
    fixed layout so ranks can all-reduce them (not the set table nor the NC4 sample, which stay local).
    """

    def __init__(self, num_classes: int, dim: int, *, global_mean: str = "class_means", max_label_sets: int = 4096,
                 nc4_rows: int = 1024, seed: int = 0):
        if global_mean not in GLOBAL_MEANS:
            raise ConfigError(f"global_mean={global_mean!r}: expected one of {', '.join(GLOBAL_MEANS)}")
        self.num_classes, self.dim, self.global_mean, self.nc4_rows = num_classes, dim, global_mean, nc4_rows
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)  # [C, d]
        self.counts = torch.zeros(num_classes, dtype=torch.float64)  # [C]
        self.second = torch.zeros(dim, dim, dtype=torch.float64)  # [d, d] sum of h h^T over m=1 rows
        self.sets = LabelSetTable(num_classes, dim, max_label_sets)
        self.kept = torch.zeros(0, dim, dtype=torch.float64)  # [<=R, d] the NC4 sample
        self.kept_priority = torch.zeros(0, dtype=torch.float64)  # [<=R] uniform keys: the R smallest are kept
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        h = features.detach().to(torch.float64)  # [B, d]
        y = _targets_2d(labels).to(h.device)  # [B, M]
        if h.dim() != 2 or h.shape[1] != self.dim or y.shape[0] != h.shape[0]:
            raise ConfigError(f"features {tuple(h.shape)} / labels {tuple(y.shape)}: expected [B, {self.dim}] and [B] or [B, M]")
        if (y >= self.num_classes).any() or (y < -1).any():
            raise ConfigError(f"labels: expected values in [0, {self.num_classes}) or -1 padding")
        srt = y.sort(dim=1).values  # [B, M]
        distinct = srt >= 0
        distinct[:, 1:] &= srt[:, 1:] != srt[:, :-1]
        mult = distinct.sum(1)  # [B]
        first = torch.where(distinct, srt, torch.full_like(srt, self.num_classes)).min(1).values  # [B]
        one = mult == 1
        h1, c1 = h[one].cpu(), first[one].cpu()
        self.sums.index_add_(0, c1, h1)
        self.counts.index_add_(0, c1, torch.ones(len(c1), dtype=torch.float64))
        self.second += h1.T @ h1
        if self.nc4_rows > 0:  # bottom-R of uniform keys: a uniform sample without replacement of the stream
            priority = torch.cat([self.kept_priority, torch.rand(len(h1), generator=self._gen, dtype=torch.float64)])
            order = priority.argsort()[: self.nc4_rows]
            self.kept, self.kept_priority = torch.cat([self.kept, h1])[order], priority[order]
        many = (mult >= 2).cpu()
        if many.any():  # each row's distinct labels ascending, padded with num_classes
            sets = torch.where(distinct, srt, self.num_classes).sort(1).values[many.to(srt.device)].cpu()
            self.sets.add(sets[:, : int(mult.max())], h[many.to(h.device)].cpu())

    def state(self) -> torch.Tensor:
        return torch.cat([self.sums.reshape(-1), self.counts, self.second.reshape(-1)])

    def load_state(self, state: torch.Tensor) -> None:
        c, d = self.num_classes, self.dim
        state = torch.as_tensor(state, dtype=torch.float64).reshape(-1)
        if state.numel() != c * d + c + d * d:
            raise ConfigError(f"state of length {state.numel()}: expected {c * d + c + d * d}")
        self.sums = state[: c * d].reshape(c, d).clone()
        self.counts = state[c * d : c * d + c].clone()
        self.second = state[c * d + c :].reshape(d, d).clone()

    def class_means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(seen class ids [C'], their means [C', d]) over multiplicity-1 rows."""
        seen = torch.nonzero(self.counts > 0).squeeze(1)  # [C']
        return seen, self.sums[seen] / self.counts[seen, None]

    def compute(self, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *, rcond: float = 1e-10,
                num_pairs: int = 200_000, max_pairs_classes: int = 2048, seed: int = 0) -> dict[str, float]:
        """NC1, NC2 (features, and the classifier when `weight` [num_classes, d] is given), NC3 and NC4 (with
        `weight`, optional `bias` [num_classes]), tag-wise statistics (when label sets were seen)."""
        seen, mu = self.class_means()
        c = len(seen)
        if c < 2:
            raise ConfigError(f"NC metrics need at least 2 classes with single-label rows; got {c}")
        n = self.counts.sum()
        mu_g = mu.mean(0) if self.global_mean == "class_means" else self.sums.sum(0) / n  # [d]
        m = mu - mu_g  # [C, d] centred means (rows of M~^T)
        sigma_w = (self.second - (self.sums[seen].T / self.counts[seen]) @ self.sums[seen]) / n  # [d, d]
        sigma_b = m.T @ m / c  # [d, d]
        evals, evecs = torch.linalg.eigh(sigma_b)
        keep = torch.zeros_like(evals, dtype=torch.bool)
        keep[-min(c - 1, self.dim):] = True
        keep &= evals > rcond * evals[-1]
        pinv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T  # [d, d]
        out = {"nc1": float(torch.trace(sigma_w @ pinv) / c)}

        g = torch.Generator().manual_seed(seed)
        i, j = _class_pairs(c, num_pairs, max_pairs_classes, g)
        out.update(_nc2(m, i, j, c, "h"))
        if weight is not None:
            w = torch.as_tensor(weight).detach().to(torch.float64).cpu()[seen]  # [C, d]
            out.update(_nc2(w, i, j, c, "w"))
            out["nc3"] = float((w / w.norm() - m / m.norm()).pow(2).sum())
            if len(self.kept):
                full = torch.as_tensor(weight).detach().to(torch.float64).cpu()  # [num_classes, d]
                b = None if bias is None else torch.as_tensor(bias).detach().to(torch.float64).cpu()
                out["nc4"] = _mismatches(self.kept, full, b, mu, seen, 65536) / len(self.kept)
        if len(self.sets.keys):
            out.update(self.sets.metrics(m, seen, mu_g, g, num_pairs))
        return out


def _class_pairs(c: int, num_pairs: int, max_classes: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs i != j: all ordered pairs when c <= max_classes, else `num_pairs` random ones."""
    if c <= max_classes:
        i, j = torch.meshgrid(torch.arange(c), torch.arange(c), indexing="ij")
        off = i != j
        return i[off], j[off]
    i = torch.randint(c, (num_pairs,), generator=g)
    return i, (i + torch.randint(1, c, (num_pairs,), generator=g)) % c


def _nc2(v: torch.Tensor, i: torch.Tensor, j: torch.Tensor, c: int, tag: str) -> dict[str, float]:
    """NC2 statistics of the rows of v [C, d] over the off-diagonal pairs (i, j)."""
    norms = v.norm(dim=1)  # [C]
    dots = (v[i] * v[j]).sum(1)  # [P]
    cos = dots / (norms[i] * norms[j]).clamp(min=1e-300)  # [P]
    # Zhu form over the same entries: Gram normalised by its Frobenius norm vs the centred simplex ETF.
    # With sampled pairs the Frobenius norm is estimated by rescaling the off-diagonal sum to C(C-1).
    off_sq = dots.pow(2).mean() * c * (c - 1)
    fro = (norms.pow(4).sum() + off_sq).sqrt()
    etf_diag, etf_off = (1 - 1 / c) / (c - 1) ** 0.5, -1 / c / (c - 1) ** 0.5
    zhu = ((norms.pow(2) / fro - etf_diag).pow(2).sum() + ((dots / fro - etf_off).pow(2).mean() * c * (c - 1))).sqrt()
    return {
        f"nc2_equinorm_{tag}": float(norms.std() / norms.mean()),
        f"nc2_equiangular_{tag}": float(cos.std()),
        f"nc2_maxangle_{tag}": float((cos + 1 / (c - 1)).abs().mean()),
        f"nc2_zhu_{tag}": float(zhu),
    }


@torch.no_grad()
def ncc_mismatch(feature_batches, means: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 *, chunk: int = 65536) -> float:
    """NC4: fraction of rows where the classifier's argmax differs from the nearest class mean.

    `feature_batches` yields [B, d] tensors (a second pass over train or test features); `means` [C, d] and
    `weight` [C, d] share the class order (pass `NCAccumulator.class_means()` and `weight[seen]`). Both
    argmaxes are streamed over class chunks, so no [B, C] matrix is formed; ties go to the lower class index.
    """
    means = torch.as_tensor(means, dtype=torch.float64)
    weight = torch.as_tensor(weight).detach().to(torch.float64)
    if means.shape != weight.shape:
        raise ConfigError(f"means {tuple(means.shape)} and weight {tuple(weight.shape)}: expected the same [C, d]")
    bias = None if bias is None else torch.as_tensor(bias).detach().to(torch.float64)
    wrong = total = 0
    for h in feature_batches:
        h = torch.as_tensor(h).detach().to(torch.float64).cpu()  # [B, d]
        wrong += _mismatches(h, weight, bias, means, None, chunk)
        total += len(h)
    return wrong / max(total, 1)


def _mismatches(h, weight, bias, means, mean_classes, chunk) -> int:
    """Rows of h `[B, d]` whose classifier argmax differs from the nearest mean's class (`mean_classes[i]`
    for mean i, or i itself when None)."""
    cls = _chunked_argmax(h, weight, bias, chunk)  # [B]
    ncc = _chunked_argmax(2 * h, means, -means.pow(2).sum(1), chunk)  # argmin ||h - mu||^2 = argmax 2h.mu - ||mu||^2
    return int((cls != (ncc if mean_classes is None else mean_classes[ncc])).sum())


def _chunked_argmax(h, weight, bias, chunk) -> torch.Tensor:
    best = torch.full((len(h),), -torch.inf, dtype=torch.float64)
    arg = torch.zeros(len(h), dtype=torch.long)
    for lo in range(0, len(weight), chunk):
        s = h @ weight[lo : lo + chunk].T  # [B, chunk]
        if bias is not None:
            s = s + bias[lo : lo + chunk]
        v, a = s.max(1)
        better = v > best  # strict: earlier chunk wins ties
        best, arg = torch.where(better, v, best), torch.where(better, a + lo, arg)
    return arg
