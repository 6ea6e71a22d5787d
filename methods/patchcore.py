"""PatchCore: a coreset memory bank of locally aware patch features (Roth, Pemula, Zepeda, Schölkopf, Brox,
Gehler, "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022, arXiv:2106.08265).

Algorithm (published defaults): backbone levels 2 and 3, each position's 3x3 neighbourhood average-pooled,
level 3 upsampled (bilinear) to level 2's grid and concatenated; memory bank = greedy k-center coreset of 10 % of
all training patches, distances for the selection on a sparse random projection to 128 dimensions; patch score =
distance to the nearest bank item; image score = the largest patch score s* re-weighted as in the paper's eq. 7:
s = (1 - exp‖m* - m_test‖ / Σ_{m ∈ N_b(m*)} exp‖m - m_test‖) · s*, where m_test is the patch with the largest
score, m* its nearest bank item and N_b(m*) the b = 9 bank items nearest to m* (m* itself included); map =
patch scores upsampled (bilinear) to the image and blurred with σ = 4.

Forms:
- ``offline`` (the paper): ``observe`` stores every training patch; ``consolidate`` selects the coreset.
- ``online``: the bank never holds more than ``budget`` patches. New patches are appended while there is room;
  when a batch would overflow it, the bank is refreshed by greedy k-center selection over (bank ∪ new patches),
  keeping ``keep`` x ``budget`` patches, so the next refresh comes after (1 - keep) x budget new patches. The
  amortised cost per image is about (1 - keep) / keep x budget x 128 x patches-per-image multiply-adds, and
  memory stays fixed whatever the stream length.

Interpretations: the official code's optional projection of each level to 1024 channels (adaptive average
pooling) is ``embed_dim`` (None = keep the concatenated channels, the paper's description); the official code
scores images by the plain maximum, we implement the paper's eq. 7 as anomalib does (support set = the b nearest
bank items of m*, which include m* itself). With an empty bank (cold start) the patch score is the feature norm.
Each online refresh draws its k-center start point from (seed, refresh count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from oadbench.components import concat_levels, greedy_kcenter, nearest_neighbours, upsample_maps
from oadbench.errors import ConfigError
from oadbench.method import Batch, Method, MethodContext, Scores, register_method, tensor_bytes


@register_method("patchcore")
class PatchCore(Method):
    description = "greedy-coreset memory bank of local patch features (Roth et al., CVPR 2022)"
    needs_images = False  # features and image_size only

    @dataclass(frozen=True)
    class Config:
        layers: tuple[int, ...] = (2, 3)
        pool: int = 3  # local neighbourhood (average pooling) of each patch
        embed_dim: int | None = None  # optional per-level channel reduction (adaptive average pooling)
        coreset_ratio: float = 0.1  # offline: fraction of all training patches kept
        projection_dim: int | None = 128  # sparse random projection for the k-center distances; None: full dim
        num_neighbors: int = 9  # b of eq. 7
        budget: int = 16384  # online: most patches the bank ever holds
        keep: float = 0.5  # online: fraction of the budget kept by each refresh
        sigma: float = 4.0  # Gaussian blur of the map, pixels

        def __post_init__(self) -> None:
            if not 0.0 < self.coreset_ratio <= 1.0:
                raise ConfigError("method.coreset_ratio", f"must be in (0, 1], got {self.coreset_ratio}")
            if not 0.0 < self.keep <= 1.0:
                raise ConfigError("method.keep", f"must be in (0, 1], got {self.keep}")
            if self.budget < 1:
                raise ConfigError("method.budget", f"must be >= 1 patch, got {self.budget}")
            if self.num_neighbors < 1:
                raise ConfigError("method.num_neighbors", f"must be >= 1, got {self.num_neighbors}")
            if self.pool < 1:
                raise ConfigError("method.pool", f"must be >= 1, got {self.pool}")
            if self.embed_dim is not None and self.embed_dim < 1:
                raise ConfigError("method.embed_dim", f"must be >= 1 or null, got {self.embed_dim}")
            if self.projection_dim is not None and self.projection_dim < 1:
                raise ConfigError("method.projection_dim", f"must be >= 1 or null, got {self.projection_dim}")
            if self.sigma < 0:
                raise ConfigError("method.sigma", f"must be >= 0, got {self.sigma}")

    def __init__(self, config: Config, context: MethodContext):
        super().__init__(config, context)
        self.bank: torch.Tensor | None = None  # (M, D) on the device
        self._stored: list[torch.Tensor] = []  # offline: all training patches, CPU
        self._stale = False
        self.refreshes = 0

    # ---------------------------------------------------------------------------------------------------------

    def embed(self, batch: Batch) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features (B·h·w, D) and the grid (h, w)."""
        levels = list(batch.features)
        if self.config.embed_dim is not None:
            levels = [_reduce_channels(f, self.config.embed_dim) for f in levels]
        emb = concat_levels(levels, mode="bilinear", pool=self.config.pool)
        b, d, h, w = emb.shape
        return emb.permute(0, 2, 3, 1).reshape(b * h * w, d).float(), (h, w)

    def observe(self, batch: Batch) -> None:
        patches, _ = self.embed(batch)
        if self.context.mode == "offline":
            self._stored.append(patches.cpu())
            self._stale = True
            return
        budget = self.config.budget
        if self.bank is None:
            memory = patches
        elif self.bank.shape[0] + patches.shape[0] <= budget:
            memory = torch.cat([self.bank, patches])
        else:
            memory = torch.cat([self.bank, patches])
            keep = max(1, int(self.config.keep * budget))
            idx = greedy_kcenter(memory, keep, seed=self.context.seed + self.refreshes,
                                 projection_dim=self.config.projection_dim)
            memory = memory[idx]
            self.refreshes += 1
        if memory.shape[0] > budget:  # a single batch larger than the budget
            idx = greedy_kcenter(memory, budget, seed=self.context.seed + self.refreshes,
                                 projection_dim=self.config.projection_dim)
            memory = memory[idx]
            self.refreshes += 1
        self.bank = memory.contiguous()

    def consolidate(self) -> None:
        if self.context.mode != "offline" or not self._stale:
            return
        if len(self._stored) > 1:  # merge in place of the per-batch pieces: the peak is one copy, not two
            merged = torch.empty(sum(t.shape[0] for t in self._stored), self._stored[0].shape[1],
                                 dtype=self._stored[0].dtype)
            pos = 0
            while self._stored:
                piece = self._stored.pop(0)
                merged[pos:pos + piece.shape[0]] = piece
                pos += piece.shape[0]
                del piece
            self._stored = [merged]
        patches = self._stored[0].to(self.device)
        k = max(1, math.ceil(self.config.coreset_ratio * patches.shape[0]))
        idx = greedy_kcenter(patches, k, seed=self.context.seed, projection_dim=self.config.projection_dim,
                             progress=k > 20000)
        self.bank = patches[idx].contiguous()
        self._stale = False

    # ---------------------------------------------------------------------------------------------------------

    def score(self, batch: Batch) -> Scores:
        patches, (h, w) = self.embed(batch)
        n = len(batch)
        if self.context.mode == "offline" and self._stale:
            self.consolidate()
        if self.bank is None:  # cold start: no memory yet
            patch_scores = patches.norm(dim=1).view(n, h * w)
            image = patch_scores.amax(1)
        else:
            dist, idx = nearest_neighbours(patches, self.bank, k=1)
            patch_scores = dist[:, 0].view(n, h * w)
            image = self._reweighted_max(patches.view(n, h * w, -1), patch_scores, idx[:, 0].view(n, h * w))
        maps = upsample_maps(patch_scores.view(n, h, w), batch.image_size, self.config.sigma)
        return Scores(image=image, maps=maps)

    def _reweighted_max(self, patches: torch.Tensor, patch_scores: torch.Tensor, nn_idx: torch.Tensor
                        ) -> torch.Tensor:
        """Eq. 7 of the paper, for each image of the batch."""
        rows = torch.arange(patches.shape[0], device=patches.device)
        best = patch_scores.argmax(1)
        s_star = patch_scores[rows, best]
        m_test = patches[rows, best]  # (B, D)
        m_star = self.bank[nn_idx[rows, best]]  # (B, D)
        _, support = nearest_neighbours(m_star, self.bank, k=self.config.num_neighbors)  # (B, b), m* first
        d = torch.linalg.vector_norm(self.bank[support] - m_test.unsqueeze(1), dim=-1)  # (B, b)
        weight = 1.0 - torch.softmax(d, dim=1)[:, 0]
        return weight * s_star

    def footprint(self) -> int:
        return tensor_bytes(self.bank, *self._stored)


def _reduce_channels(feature: torch.Tensor, dim: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, dim, H, W) by adaptive average pooling over channels (the official preprocessing)."""
    b, c, h, w = feature.shape
    flat = feature.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    return F.adaptive_avg_pool1d(flat, dim).view(b, h, w, dim).permute(0, 3, 1, 2)
