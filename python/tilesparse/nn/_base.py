"""Shared machinery of TileSparseLinear and TileSparseConv2d.

A tile-sparse module computes one GEMM per weight group (``groups`` of a
convolution, 1 for Linear): ``Y_g = X_g @ W_g^T`` with ``W_g`` of shape
``[N_g, K]``. Each group has its own tile-wise layout; the layouts of all
groups are concatenated in three int32 buffers (``cols``, ``row_offsets``,
``rows``) and their lengths kept as Python ints (``_meta``), so ``forward``
slices them with constants (``torch.compile`` guards on them).

Two states:

* **masked** (``finalized == False``): dense ``weight`` Parameter in the
  shape of the dense module, ``mask`` bool buffer (persistent), optional
  ``residue_mask`` (TEW). The index buffers are derived from the mask (not
  saved). ``forward`` packs the weight through the layout
  (``tw_pack``, whose backward unpacks) and runs ``tw_linear``: the weight
  gradient is exactly zero where pruned, and the pruned entries are never read.
* **final** (``finalized == True``): only the condensed 1-D ``values``
  Parameter (plus ``residue_values`` for TEW) and the index buffers, which are
  then saved in ``state_dict`` together with ``layout_meta`` ``[groups, 4]``.

``unit`` (int, default 1) records that every tile's kept input features are
a union of aligned runs ``[u*unit, (u+1)*unit)`` (the mask was pruned with
that ``unit``); it is checked whenever the mask changes and travels in
``state_dict`` as the module's extra state.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layout import TileLayout

_ops = torch.ops.tilesparse

_INDEX_BUFFERS = ("cols", "row_offsets", "rows")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _sorted_index(index: Tensor) -> bool:
    """Whether the columns of a ``[3, nnz]`` (group, row, col) index are in lexicographic order."""
    if index.shape[1] < 2:
        return True
    a, b = index[:, :-1], index[:, 1:]
    lt, eq = a < b, a == b
    ok = lt[0] | (eq[0] & (lt[1] | (eq[1] & lt[2])))
    return bool(ok.all())


class TileSparseBase(nn.Module):
    """Base of the tile-sparse modules (not used directly)."""

    unit: int = 1  # the instance attribute is set in _init_state; this covers modules pickled before it

    # set by subclasses before _init_state
    tile: int
    groups: int
    _n_g: int
    _k: int
    _weight_shape: Tuple[int, ...]

    # ------------------------------------------------------------------ init
    def _init_state(self, weight: nn.Parameter, bias: Optional[nn.Parameter]) -> None:
        self.finalized = False
        self.has_residue = False
        self.unit = 1
        self._meta: List[Tuple[int, int, int, int]] = []
        self._offsets: List[Tuple[int, ...]] = []
        self._nnz_residue = 0
        self.weight = weight
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = bias
        self.register_buffer("mask", torch.ones(self._weight_shape, dtype=torch.bool, device=weight.device))
        self._rebuild_index()

    # ------------------------------------------------------------- shapes
    @property
    def gemm_shape(self) -> Tuple[int, int, int]:
        """``(groups, N_g, K)``: the GEMM view of the weight."""
        return (self.groups, self._n_g, self._k)

    def gemm_view(self, t: Tensor) -> Tensor:
        """A weight-shaped tensor viewed as ``[groups, N_g, K]``."""
        return t.reshape(self.groups, self._n_g, self._k)

    def _weight_like(self, t: Tensor, name: str) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        numel = self.groups * self._n_g * self._k
        shapes = {tuple(self._weight_shape), (self.groups, self._n_g, self._k), (self.groups * self._n_g, self._k)}
        if tuple(t.shape) not in shapes or t.numel() != numel:
            raise ValueError(f"{name} must have the weight's shape {tuple(self._weight_shape)} (or its GEMM view "
                             f"{(self.groups, self._n_g, self._k)}), got {tuple(t.shape)}")
        return t.reshape(self._weight_shape)

    # ------------------------------------------------------------- layout
    def _set_meta(self, meta: Sequence[Sequence[int]]) -> None:
        self._meta = [tuple(int(v) for v in m) for m in meta]
        offs, c, o, r, v = [], 0, 0, 0, 0
        for nc, no, nr, nv in self._meta:
            offs.append((c, c + nc, o, o + no, r, r + nr, v, v + nv))
            c, o, r, v = c + nc, o + no, r + nr, v + nv
        self._offsets = offs

    def _rebuild_index(self) -> None:
        """Derives the index buffers (and residue indices) from ``mask``."""
        dev = self.mask.device
        cols, ros, rows, meta = [], [], [], []
        if dev.type == "meta":  # no data: the dense layout's shapes (a new module's all-ones mask)
            t = -(-self._n_g // self.tile)
            slots = -(-self._k // TileLayout.PAD) * TileLayout.PAD  # every tile keeps all K, padded
            for g in range(self.groups):
                cols.append(torch.empty(self._n_g, dtype=torch.int32))
                ros.append(torch.empty(t + 1, dtype=torch.int32))
                rows.append(torch.empty(t * slots, dtype=torch.int32))
                meta.append((self._n_g, t + 1, t * slots, self._n_g * slots))
        else:
            mask = self.gemm_view(self.mask).detach().cpu()
            for g in range(self.groups):
                lay = TileLayout.from_mask(mask[g].contiguous(), self.tile)
                cols.append(lay.cols)
                ros.append(lay.row_offsets)
                rows.append(lay.rows)
                meta.append((lay.cols.numel(), lay.row_offsets.numel(), lay.rows.numel(), lay.num_values))
        persistent = self.finalized
        self.register_buffer("cols", torch.cat(cols).to(dev), persistent=persistent)
        self.register_buffer("row_offsets", torch.cat(ros).to(dev), persistent=persistent)
        self.register_buffer("rows", torch.cat(rows).to(dev), persistent=persistent)
        self._set_meta(meta)
        if self.has_residue:
            idx = self.gemm_view(self.residue_mask).detach().nonzero().t().contiguous().to(torch.int64)
            self.register_buffer("residue_index", idx.to(dev), persistent=persistent)
            self._nnz_residue = idx.shape[1]
        else:
            self._nnz_residue = 0

    def layout(self, group: int = 0) -> TileLayout:
        """The :class:`~tilesparse.TileLayout` of weight group ``group``."""
        if not 0 <= group < self.groups:
            raise ValueError(f"group must be in [0, {self.groups}), got {group}")
        c0, c1, o0, o1, r0, r1, _, _ = self._offsets[group]
        return TileLayout(self.cols[c0:c1], self.row_offsets[o0:o1], self.rows[r0:r1], (self._n_g, self._k),
                          self.tile, self._meta[group][3])

    @property
    def num_values(self) -> int:
        """Stored values: condensed tile values (padding slots included) plus the TEW residue."""
        return sum(m[3] for m in self._meta) + self._nnz_residue

    @property
    def num_kept(self) -> int:
        """Kept weights: the tiles' kept weights (padding excluded) plus the TEW residue."""
        return sum(self.layout(g).num_kept for g in range(self.groups)) + self._nnz_residue

    @property
    def density(self) -> float:
        total = self.groups * self._n_g * self._k
        return self.num_kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    # --------------------------------------------------------------- masks
    def tw_mask(self) -> Tensor:
        """Bool mask (weight-shaped) of the tile-wise part."""
        if not self.finalized:
            return self.mask.clone()
        return torch.stack([self.layout(g).mask() for g in range(self.groups)]).reshape(self._weight_shape)

    def residue_keep_mask(self) -> Tensor:
        """Bool mask (weight-shaped) of the TEW residue (all False without one)."""
        out = torch.zeros(self.groups, self._n_g, self._k, dtype=torch.bool, device=self.cols.device)
        if self.has_residue:
            g, n, k = self.residue_index
            out[g, n, k] = True
        return out.reshape(self._weight_shape)

    def keep_mask(self) -> Tensor:
        """Bool mask (weight-shaped) of every kept weight (TW part and residue)."""
        return self.tw_mask() | self.residue_keep_mask()

    def _check_unit_mask(self, mask: Tensor, unit: int, name: str = "mask") -> None:
        """Raises ValueError unless every output feature of ``mask`` (weight-
        shaped) keeps whole aligned runs of ``unit`` input features."""
        from ..patterns import misaligned_run

        mv = self.gemm_view(mask).detach().cpu()
        for g in range(self.groups):
            bad = misaligned_run(mv[g], unit)
            if bad is not None:
                n, u = bad
                where = f"group {g}, " if self.groups > 1 else ""
                raise ValueError(f"{name} is not made of aligned runs of unit={unit} input features: {where}output "
                                 f"feature {n} keeps part of input features [{u * unit}, "
                                 f"{min((u + 1) * unit, self._k)})")

    def set_mask(self, mask: Tensor, residue: Optional[Tensor] = None, *, unit: int = 1) -> None:
        """Sets a new tile-wise ``mask`` (and TEW ``residue`` mask, disjoint from
        it) and zeroes the pruned weights. Masked state only. ``unit``: the
        aligned runs of input features the mask keeps whole (checked; recorded
        as :attr:`unit`); the residue is unstructured.

        Raises ValueError when ``mask`` is not tile-wise for this ``tile`` in
        every group (see :meth:`tilesparse.TileLayout.from_mask`), or not made
        of whole runs of ``unit``.
        """
        if self.finalized:
            raise RuntimeError(f"{type(self).__name__} is finalized: its layout is fixed; set masks before "
                               "finalize() (or use to_dense())")
        unit = check_positive_int("unit", unit)
        mask = self._weight_like(mask, "mask").to(device=self.mask.device, dtype=torch.bool)
        self._check_unit_mask(mask, unit)
        if residue is not None:
            residue = self._weight_like(residue, "residue").to(device=self.mask.device, dtype=torch.bool)
            if bool((residue & mask).any()):
                raise ValueError("residue must be disjoint from mask (it restores pruned weights)")
            if not bool(residue.any()):
                residue = None
        old = (self.mask.clone(), self.has_residue, getattr(self, "residue_mask", None))
        with torch.no_grad():
            self.mask.copy_(mask)
            if residue is not None:
                if self.has_residue:
                    self.residue_mask.copy_(residue)
                else:
                    self.register_buffer("residue_mask", residue.clone())
                    self.has_residue = True
            elif self.has_residue:
                del self._buffers["residue_mask"]
                del self._buffers["residue_index"]
                self.has_residue = False
            try:
                self._rebuild_index()
            except Exception:
                self.mask.copy_(old[0])
                if old[1]:
                    self.register_buffer("residue_mask", old[2])
                self.has_residue = old[1]
                self._rebuild_index()
                raise
        self.unit = unit
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """Zeroes the pruned weights (masked state) and, with ``optimizer``, the
        optimizer state of this weight at those positions (``exp_avg``,
        ``momentum_buffer``, ...). A no-op for finalized modules, whose pruned
        weights do not exist."""
        if self.finalized:
            return
        keep = self.mask | self.residue_mask if self.has_residue else self.mask
        self.weight.masked_fill_(~keep, 0)
        if optimizer is not None:
            state = optimizer.state.get(self.weight, {})
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == self.weight.shape:
                    value.masked_fill_(~keep, 0)

    def prune(self, sparsity: float, *, col_sparsity=0.0, delta: float = 0.0, k_align: int = 1, unit: int = 1,
              scores: Optional[Tensor] = None) -> "TileSparseBase":
        """Prunes this module alone to ``sparsity`` (TW, or TEW with ``delta``),
        scoring by ``scores`` (weight-shaped, default ``|weight|``); ``unit``:
        aligned runs of input features kept or pruned together."""
        from ..patterns import check_unit, tew_masks, tw_mask

        if self.finalized:
            raise RuntimeError(f"{type(self).__name__} is finalized: prune before finalize()")
        k_align, unit = check_unit(k_align, unit)
        s = self.weight.detach().abs() if scores is None else self._weight_like(scores, "scores")
        s = self.gemm_view(s).to(torch.float64)
        tw, res = [], []
        for g in range(self.groups):
            if delta > 0:
                a, b = tew_masks(s[g], sparsity, delta, self.tile, col_sparsity, k_align, unit)
                tw.append(a)
                res.append(b)
            else:
                tw.append(tw_mask(s[g], sparsity, self.tile, col_sparsity, k_align, unit))
        self.set_mask(torch.stack(tw), torch.stack(res) if res else None, unit=unit)
        return self

    # -------------------------------------------------------------- compute
    def _gemm(self, xs: Tensor, bias: Optional[Tensor]) -> Tensor:
        """``xs[..., groups * K]`` (group g's input in columns g*K:(g+1)*K) ->
        ``[..., groups * N_g]``."""
        G, ng, k = self.groups, self._n_g, self._k
        if self.finalized:
            vals_all = self.values
        else:
            wv = self.gemm_view(self.weight)
        cast = None
        if torch.is_autocast_enabled(xs.device.type):  # as nn.Linear under autocast: compute in the autocast dtype
            cast = torch.get_autocast_dtype(xs.device.type)
            xs = xs.to(cast)
        outs = []
        for g in range(G):
            c0, c1, o0, o1, r0, r1, v0, v1 = self._offsets[g]
            cols, ro, rows = self.cols[c0:c1], self.row_offsets[o0:o1], self.rows[r0:r1]
            if self.finalized:
                vals = vals_all[v0:v1]
            else:
                vals = _ops.tw_pack(wv[g], cols, ro, rows, self.tile, v1 - v0)
            b = None if bias is None else (bias if G == 1 else bias[g * ng:(g + 1) * ng])
            if cast is not None and vals.dtype != cast:
                vals = vals.to(cast)
                b = None if b is None else b.to(cast)
            xg = xs if G == 1 else xs[..., g * k:(g + 1) * k]
            outs.append(_ops.tw_linear(xg, vals, cols, ro, rows, b, ng, self.tile))
        y = outs[0] if G == 1 else torch.cat(outs, dim=-1)
        if self.has_residue:
            y = self._residue_add(y, xs)
        return y

    def _residue_values(self) -> Tensor:
        if self.finalized:
            return self.residue_values
        g, n, k = self.residue_index
        return self.gemm_view(self.weight)[g, n, k]

    def _residue_csr(self) -> Tuple[Tensor, Tensor]:
        """``(row_ptr, cols)`` (int32) of the residue as one CSR matrix
        ``[groups * N_g, groups * K]`` (block-diagonal over the groups).
        ``residue_index`` is sorted by (group, row, col), as ``nonzero`` gives
        it (checked on load), so the row pointers are a ``searchsorted``:
        O(nnz) per call, and nothing cached that a device move or load could
        leave stale."""
        g, n, k = self.residue_index
        rows = g * self._n_g + n
        bounds = torch.arange(self.groups * self._n_g + 1, device=rows.device)
        return (torch.searchsorted(rows, bounds, out_int32=True), (g * self._k + k).to(torch.int32))

    def _residue_add(self, y: Tensor, xs: Tensor) -> Tensor:
        """``y + X @ R^T`` for the unstructured residue R (TEW), with the
        ``csr_linear`` operator: ``2 * M * nnz`` flops, no ``[M, nnz]``
        intermediate."""
        rv = self._residue_values()
        if rv.dtype != xs.dtype:
            rv = rv.to(xs.dtype)
        row_ptr, cols = self._residue_csr()
        return y + _ops.csr_linear(xs, rv, row_ptr, cols, y.shape[-1])

    def dense_weight(self) -> Tensor:
        """The effective dense weight (zeros where pruned), in the dense
        module's shape; differentiable."""
        if not self.finalized:
            keep = self.mask | self.residue_mask if self.has_residue else self.mask
            return self.weight * keep
        parts = []
        for g in range(self.groups):
            c0, c1, o0, o1, r0, r1, v0, v1 = self._offsets[g]
            parts.append(_ops.tw_unpack(self.values[v0:v1], self.cols[c0:c1], self.row_offsets[o0:o1],
                                        self.rows[r0:r1], self.tile, self._n_g, self._k))
        w = torch.stack(parts)
        if self.has_residue:
            g, n, k = self.residue_index
            w = w.index_put((g, n, k), self.residue_values, accumulate=True)
        return w.reshape(self._weight_shape)

    def __getattr__(self, name: str):
        # A finalized module has no dense weight; code that reads
        # `module.weight` (e.g. for its dtype) gets the effective dense weight.
        if name == "weight" and self.__dict__.get("finalized", False):
            return self.dense_weight()
        return super().__getattr__(name)

    # ------------------------------------------------------------- states
    @torch.no_grad()
    def finalize(self) -> "TileSparseBase":
        """Converts to the final state: packed ``values`` only; the dense
        ``weight`` and the masks are dropped, so parameters, gradients and
        optimizer state shrink with the sparsity. Create the optimizer after
        finalizing (the parameters are new). Idempotent; returns ``self``."""
        if self.finalized:
            return self
        wv = self.gemm_view(self.weight)
        parts = []
        for g in range(self.groups):
            c0, c1, o0, o1, r0, r1, v0, v1 = self._offsets[g]
            parts.append(_ops.tw_pack(wv[g].contiguous(), self.cols[c0:c1], self.row_offsets[o0:o1],
                                      self.rows[r0:r1], self.tile, v1 - v0))
        values = nn.Parameter(torch.cat(parts) if parts else wv.new_empty(0),
                              requires_grad=self.weight.requires_grad)
        rv = None
        if self.has_residue:
            g, n, k = self.residue_index
            rv = nn.Parameter(wv[g, n, k].clone(), requires_grad=self.weight.requires_grad)
        dev = self.weight.device
        del self.weight
        del self._buffers["mask"]
        if self.has_residue:
            del self._buffers["residue_mask"]
        self.finalized = True
        for name in _INDEX_BUFFERS:
            self.register_buffer(name, self._buffers[name], persistent=True)
        self.register_buffer("layout_meta", torch.tensor(self._meta, dtype=torch.int64, device=dev).reshape(-1, 4))
        self.values = values
        if rv is not None:
            self.register_buffer("residue_index", self._buffers["residue_index"], persistent=True)
            self.residue_values = rv
        return self

    @torch.no_grad()
    def _unfinalize(self) -> None:
        """Back to the masked state with the current layout (used when a
        masked-state ``state_dict`` is loaded into a finalized module)."""
        if not self.finalized:
            return
        w = self.dense_weight()
        mask = self.tw_mask()
        res = self.residue_keep_mask() if self.has_residue else None
        req = self.values.requires_grad
        del self.values
        if self.has_residue:
            del self.residue_values
        del self._buffers["layout_meta"]
        self.finalized = False
        self.weight = nn.Parameter(w.contiguous(), requires_grad=req)
        self.register_buffer("mask", mask)
        if res is not None:
            self.register_buffer("residue_mask", res)
        self._rebuild_index()

    def get_extra_state(self) -> Tensor:
        # a tensor, not a dict, so that tensor-only checkpoint formats
        # (safetensors) and code that maps over state_dict values keep working
        return torch.tensor(self.unit, dtype=torch.int64)

    def set_extra_state(self, state) -> None:
        if not isinstance(state, Tensor) or state.numel() != 1 or state.dtype.is_floating_point:
            raise ValueError(f"extra state must be the unit as a one-element integer tensor, got {state!r}")
        self.unit = check_positive_int("unit", int(state.item()))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        old_unit = self.unit
        n_err = len(error_msgs)
        self._load_state(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        extra = prefix + "_extra_state"
        if extra not in state_dict:  # saved before `unit` existed: no run structure claimed
            if extra in missing_keys:
                missing_keys.remove(extra)
            self.unit = 1
        if len(error_msgs) == n_err and self.unit > 1:
            try:
                self._check_unit_mask(self.tw_mask(), self.unit, prefix + ("rows" if self.finalized else "mask"))
            except ValueError as e:
                error_msgs.append(str(e))
                self.unit = old_unit

    def _load_state(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        has = lambda name: prefix + name in state_dict  # noqa: E731
        if has("values") and not self.finalized:
            self.finalize()
        elif has("weight") and self.finalized:
            self._unfinalize()
        if self.finalized:
            want_res = has("residue_values")
            if want_res and not self.has_residue:
                self.has_residue = True
                self.register_buffer("residue_index", torch.zeros(3, 0, dtype=torch.int64, device=self.cols.device))
                self.residue_values = nn.Parameter(self.values.new_empty(0), requires_grad=self.values.requires_grad)
            elif not want_res and self.has_residue:
                del self.residue_values
                del self._buffers["residue_index"]
                self.has_residue = False
                self._nnz_residue = 0
            # index tensors and values have data-dependent sizes: take the incoming ones
            for name in _INDEX_BUFFERS + ("layout_meta", "residue_index"):
                if has(name) and name in self._buffers:
                    src, cur = state_dict[prefix + name], self._buffers[name]
                    if isinstance(src, Tensor) and src.shape != cur.shape:
                        self._buffers[name] = torch.empty(src.shape, dtype=cur.dtype, device=cur.device)
            for name in ("values", "residue_values"):
                if has(name) and self._parameters.get(name) is not None:
                    src, cur = state_dict[prefix + name], self._parameters[name]
                    if isinstance(src, Tensor) and src.shape != cur.shape:
                        self._parameters[name] = nn.Parameter(cur.new_empty(src.shape),
                                                              requires_grad=cur.requires_grad)
            n_err = len(error_msgs)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            if len(error_msgs) == n_err and has("layout_meta"):
                meta = self._buffers["layout_meta"].tolist()
                if len(meta) != self.groups:
                    error_msgs.append(f"{prefix}layout_meta: expected {self.groups} groups, got {len(meta)}")
                    return
                self._set_meta(meta)
                self._nnz_residue = self.residue_index.shape[1] if self.has_residue else 0
                if self.has_residue and not _sorted_index(self.residue_index):
                    error_msgs.append(f"{prefix}residue_index: entries must be sorted by (group, row, col), "
                                      "as a saved module writes them")
        else:
            want_res = has("residue_mask")
            if want_res and not self.has_residue:
                self.register_buffer("residue_mask", torch.zeros_like(self.mask))
                self.has_residue = True
            elif not want_res and self.has_residue:
                del self._buffers["residue_mask"]
                self._buffers.pop("residue_index", None)
                self.has_residue = False
            n_err = len(error_msgs)
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)
            if len(error_msgs) == n_err:
                try:
                    self._rebuild_index()
                except ValueError as e:
                    error_msgs.append(f"{prefix}mask: {e}")

    def _state_repr(self) -> str:
        state = "final" if self.finalized else "masked"
        s = f"tile={self.tile}, " + (f"unit={self.unit}, " if self.unit != 1 else "") + \
            f"state={state}, density={self.density:.4f}"
        if self.has_residue:
            s += f", residue={self._nnz_residue}"
        return s


class MaskedMixin:
    """Dense weight times a bool ``mask`` buffer: how the comparison patterns
    (``ew``, ``vw``, ``bw``, ``nm``) run. ``finalize`` keeps the mask (the
    pattern stays enforced) and only zeroes the pruned weights."""

    finalized = False

    def _init_mask(self) -> None:
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def gemm_view(self, t: Tensor) -> Tensor:
        g = getattr(self, "groups", 1)
        return t.reshape(g, t.shape[0] // g, -1)

    @property
    def gemm_shape(self):
        g = getattr(self, "groups", 1)
        return (g, self.weight.shape[0] // g, self.weight[0].numel())

    def set_mask(self, mask: Tensor, residue: Optional[Tensor] = None) -> None:
        if residue is not None:
            raise ValueError(f"{type(self).__name__} takes no residue")
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        if mask.numel() != self.weight.numel():
            raise ValueError(f"mask must have the weight's shape {tuple(self.weight.shape)}, got {tuple(mask.shape)}")
        with torch.no_grad():
            self.mask.copy_(mask.reshape(self.weight.shape))
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self, optimizer=None) -> None:
        self.weight.masked_fill_(~self.mask, 0)
        if optimizer is not None:
            for value in optimizer.state.get(self.weight, {}).values():
                if isinstance(value, Tensor) and value.shape == self.weight.shape:
                    value.masked_fill_(~self.mask, 0)

    def keep_mask(self) -> Tensor:
        return self.mask.clone()

    def dense_weight(self) -> Tensor:
        return self.weight * self.mask

    @property
    def density(self) -> float:
        return float(self.mask.sum()) / max(self.mask.numel(), 1)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def finalize(self):
        self.apply_mask()
        return self
