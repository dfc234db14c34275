"""The multi-head potential: one descriptor, one fitting head per dataset/functional.

``energy = sum_i e_i`` with ``e_i`` from the head selected per graph; ``forces = -dE/dr`` and the virial
``W = -dE/d(strain)`` (DeePMD sign, see :mod:`lam.data.keys`) by automatic differentiation. The virial uses
the strain trick: positions and cell of each graph are displaced by ``r -> r (1 + eps)`` with a zero strain
tensor ``eps`` (G, 3, 3) that requires grad, so one backward pass gives forces and virial together.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import Tensor, nn

from lam.data import keys as K
from lam.data.graph import edge_vectors
from lam.models.heads import FittingHead

_MAX_Z = 119


def _field(batch: Any, key: str) -> Tensor | None:
    """A field of a PyG Batch/Data or of a dict, or None if absent."""
    if isinstance(batch, Mapping):
        return batch.get(key)
    try:
        return batch[key] if key in batch else None
    except (KeyError, AttributeError, TypeError):
        return getattr(batch, key, None)


class EnergyCore(nn.Module):
    """Descriptor + heads -> atomic energies; the TorchScript-able part of :class:`Potential`.

    The descriptor also runs on one isolated atom of every type (appended after the real atoms, no edges), so
    that every head measures its output from the isolated atom's (see :class:`FittingHead`).
    """

    def __init__(self, descriptor: nn.Module, heads: nn.ModuleDict, ntypes: int) -> None:
        super().__init__()
        self.descriptor = descriptor
        self.heads = heads
        self.ntypes = ntypes

    def forward(self, types: Tensor, edge_index: Tensor, edge_vec: Tensor, atom_head: Tensor,
                heads_present: list[int]) -> tuple[Tensor, Tensor]:
        n = types.shape[0]
        ref_types = torch.arange(self.ntypes, device=types.device)
        feats_all = self.descriptor(torch.cat([types, ref_types]), edge_index, edge_vec)
        feats, isolated = feats_all[:n], feats_all[n:]
        energy = feats.new_zeros(n)
        k = 0
        for head in self.heads.values():
            if k in heads_present:
                if len(heads_present) == 1:
                    energy = head(feats, types, isolated)
                else:
                    idx = torch.nonzero(atom_head == k).squeeze(1)
                    e_k = head(feats.index_select(0, idx), types.index_select(0, idx), isolated)
                    energy = energy.index_copy(0, idx, e_k)
            k += 1
        return energy, feats


class Potential(nn.Module):
    """Descriptor + a dictionary of fitting heads (+ optional direct-force head).

    Args:
        descriptor: module with ``rcut``, ``dim_out``, ``ntypes`` and ``forward(types, edge_index, edge_vec)``.
        heads: ordered mapping head name -> :class:`FittingHead`; the order defines the head indices that
            batches carry in ``head`` (G,).
        type_map: element symbols; position = type index used by the descriptor.
        direct_force_head: optional :class:`lam.models.direct_force.DirectForceHead`.
    """

    def __init__(self, descriptor: nn.Module, heads: Mapping[str, FittingHead], type_map: Sequence[str],
                 direct_force_head: nn.Module | None = None) -> None:
        super().__init__()
        if len(heads) == 0:
            raise ValueError("Potential needs at least one head")
        self.type_map = [str(s) for s in type_map]
        ntypes = getattr(descriptor, "ntypes", len(self.type_map))
        if ntypes != len(self.type_map):
            raise ValueError(f"descriptor has ntypes={ntypes} but type_map has {len(self.type_map)} elements")
        table = torch.full((_MAX_Z,), -1, dtype=torch.long)
        for index, symbol in enumerate(self.type_map):
            if symbol not in atomic_numbers:
                raise ValueError(f"type_map entry {symbol!r} is not a chemical element")
            table[atomic_numbers[symbol]] = index
        self.register_buffer("type_table", table)
        self.descriptor = descriptor
        self.heads = nn.ModuleDict(dict(heads))
        self.direct_force_head = direct_force_head
        self.build_info: dict[str, Any] = {}
        self._energy_fn: Any = None

    # ------------------------------------------------------------------ properties
    @property
    def head_names(self) -> list[str]:
        """Head names in index order."""
        return list(self.heads.keys())

    @property
    def ntypes(self) -> int:
        return len(self.type_map)

    @property
    def cutoffs(self) -> list[float]:
        """Every cutoff the energy depends on (where smoothness must hold), ascending."""
        cuts = getattr(self.descriptor, "cutoffs", None)
        if cuts is None:  # DPA-2 keeps its per-block (rcut, rcut_smth, sel) in ``cut``
            blocks = getattr(self.descriptor, "cut", None)
            cuts = [v[0] for v in blocks.values()] if isinstance(blocks, dict) else [self.descriptor.rcut]
        return sorted({float(c) for c in cuts})

    @property
    def rcut(self) -> float:
        """Radius the neighbour list must cover (energy and direct-force head)."""
        cut = float(self.descriptor.rcut)
        if self.direct_force_head is not None:
            cut = max(cut, float(self.direct_force_head.rcut))
        return cut

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters (where batches for this model are built)."""
        return next(p for p in self.parameters()).device

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything needed to rebuild an identically shaped model (see ``lam.models.builder``)."""
        from lam import __version__

        meta = dict(self.build_info)
        meta.update({
            "type_map": list(self.type_map),
            "heads": self.head_names,
            "head_configs": {name: head.config for name, head in self.heads.items()},
            "dtype": str(self.dtype).replace("torch.", ""),
            "lam_version": __version__,
            "descriptor_class": type(self.descriptor).__name__,
            "descriptor_config": dict(getattr(self.descriptor, "config", {})),
            "cutoffs": self.cutoffs,
            "direct_force": None if self.direct_force_head is None else self.direct_force_head.config,
        })
        return meta

    # ------------------------------------------------------------------ head management
    def _head_index(self, name: str) -> None:
        if name not in self.heads:
            raise KeyError(f"no head named {name!r}; this model has heads {self.head_names}")

    def add_head(self, name: str, head: FittingHead | None = None, init_from: str | None = None) -> FittingHead:
        """Add a head: a given module, a copy of head ``init_from``, or a fresh one shaped like the first head
        (fresh weights, with the first head's fitted input normalisation and output scale)."""
        if name in self.heads:
            raise ValueError(f"head {name!r} already exists; heads are {self.head_names}")
        if head is not None and init_from is not None:
            raise ValueError("pass either head or init_from, not both")
        if head is None:
            if init_from is not None:
                self._head_index(init_from)
                head = copy.deepcopy(self.heads[init_from])
            else:  # fresh weights, but the data normalisation of the first head (same descriptor)
                first = next(iter(self.heads.values()))
                head = FittingHead(**first.config)
                with torch.no_grad():
                    for buf in ("input_mean", "input_std", "scale"):
                        getattr(head, buf).copy_(getattr(first, buf).cpu())
        ref = next(iter(self.heads.values())).element_energy
        head = head.to(device=ref.device, dtype=self.dtype)
        self._energy_fn = None
        self.heads[name] = head
        return head

    def remove_head(self, name: str) -> None:
        """Remove a head; the indices of the heads after it shift down by one."""
        self._head_index(name)
        if len(self.heads) == 1:
            raise ValueError("cannot remove the last head")
        self._energy_fn = None
        del self.heads[name]

    def rename_head(self, old: str, new: str) -> None:
        """Rename a head, keeping its index."""
        self._head_index(old)
        if new in self.heads and new != old:
            raise ValueError(f"head {new!r} already exists")
        self.heads = nn.ModuleDict({(new if k == old else k): v for k, v in self.heads.items()})
        self._energy_fn = None

    def freeze_descriptor(self, frozen: bool = True) -> None:
        """Stop (or restart) gradient updates of the descriptor parameters."""
        for p in self.descriptor.parameters():
            p.requires_grad_(not frozen)

    def set_element_energies(self, head: str, energies: Mapping[str, float]) -> None:
        """Set per-element energy references (eV) of one head from ``{symbol: energy}``."""
        self._head_index(head)
        buf = self.heads[head].element_energy
        with torch.no_grad():
            for symbol, value in energies.items():
                if symbol not in self.type_map:
                    raise ValueError(f"element {symbol!r} is not in the type map {self.type_map}")
                buf[self.type_map.index(symbol)] = float(value)

    def fit_descriptor_statistics(self, graphs: Iterable[Any], heads: bool = False) -> bool:
        """Set the descriptor's environment-matrix scales from sample graphs (DeePMD-kit's statistics step).

        ``graphs`` are single graphs or batches with ``numbers``, ``pos``, ``cell``, ``edge_index``, ``shifts``
        (and ``batch`` for batches). With ``heads=True`` the heads' input standardisation and output scale are
        fitted afterwards too (:meth:`fit_output_statistics`; off by default: on the demo data it did not
        speed up force learning once the descriptor inputs were normalised). Call it once on training data
        before a fresh training run; the scales are part of the weights / metadata afterwards. Returns False
        when there was nothing to fit.
        """
        graphs = list(graphs)
        fitted = False
        fn = getattr(self.descriptor, "compute_env_stats", None)
        if fn is not None:
            with torch.no_grad():
                fn([self._edge_sample(g)[:3] for g in graphs])
            self._energy_fn = None
            fitted = True
        return (heads and self.fit_output_statistics(graphs)) or fitted

    def _edge_sample(self, g: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """(types, edge_index, edge vectors, graph index per atom, number of graphs) of a graph or batch."""
        pos = g[K.POSITIONS].to(self.dtype)
        seg = g[K.BATCH] if K.BATCH in g else torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        cell = g[K.CELL].reshape(-1, 3, 3).to(self.dtype)
        vec = edge_vectors(pos, g[K.EDGE_INDEX], g[K.SHIFTS].to(self.dtype), cell, seg)
        return self.types_from_numbers(g[K.NUMBERS]), g[K.EDGE_INDEX], vec, seg.long(), cell.shape[0]

    def _graph_heads(self, g: Any, num_graphs: int) -> Tensor | None:
        """Head index per graph (G,) from the ``head`` field; None (every head) when absent."""
        field = g[K.HEAD] if K.HEAD in g else None
        if field is None:
            return None if len(self.heads) > 1 else torch.zeros(num_graphs, dtype=torch.long)
        return field.reshape(-1).long().cpu()

    def fit_output_statistics(self, graphs: Iterable[Any], min_atoms: int = 2,
                              force_fraction: float = 0.3) -> bool:
        """Fit each head's per-element input standardisation and its output ``scale`` from sample graphs.

        * ``input_mean``: each feature's mean per element (over all atoms for heads without ``type_input``,
          which must still tell the elements apart from the features), over the atoms of that head's graphs
          (graphs without a ``head`` field count for every head; a head with fewer than ``min_atoms`` atoms
          uses all heads' atoms).
        * ``input_std``: one number, the RMS over features of their standard deviation over those atoms, so
          the network's inputs vary by O(1) whatever the neighbour count and ``sel``. Not per feature: with
          few molecules some features barely vary, and dividing each by its own spread amplifies the
          gradients into the descriptor by up to 100x, which measurably destabilises training.
        * ``scale`` (eV): ``force_fraction`` times the data's force RMS divided by the RMS of the forces the
          standardised network gives with unit scale, so that a fresh head predicts forces (in random
          directions) of a set fraction of the data's size instead of ~100x too small ones; MACE sets its
          output scale from the force RMS for the same reason. A fraction below one keeps the initial error
          near that of predicting zero (at 1 it starts ~1.4x higher, and short runs end above where they
          began); 0.3 learnt as fast as 1 on the demo data. Heads without force labels keep their scale.

        Element energies are left alone (set them with :meth:`set_element_energies`). Returns False when no
        graph has atoms.
        """
        graphs = list(graphs)
        nh, nt = len(self.heads), self.ntypes
        dim = int(next(iter(self.heads.values())).dim_in)
        s1 = torch.zeros(nh, nt, dim, dtype=torch.float64)
        s2 = torch.zeros_like(s1)
        cnt = torch.zeros(nh, nt, dtype=torch.float64)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for g in graphs:
                types, edge_index, vec, seg, ng = self._edge_sample(g)
                feats = self.descriptor(types, edge_index, vec).double().cpu()
                types_c, seg_c = types.cpu(), seg.cpu()
                heads = self._graph_heads(g, ng)
                for h in range(nh):
                    sel = torch.ones_like(types_c, dtype=torch.bool) if heads is None else heads[seg_c] == h
                    t = types_c[sel]
                    s1[h].index_add_(0, t, feats[sel])
                    s2[h].index_add_(0, t, feats[sel] ** 2)
                    cnt[h] += torch.bincount(t, minlength=nt).double()
        if float(cnt.sum()) == 0.0:
            self.train(was_training)
            return False
        for h, head in enumerate(self.heads.values()):
            a, b, n = (s1[h], s2[h], cnt[h]) if cnt[h].sum() >= min_atoms else (s1.sum(0), s2.sum(0), cnt.sum(0))
            total = n.sum()
            if total < min_atoms:
                continue
            mean_all = a.sum(0) / total
            # one scale for all features: the RMS over features of their standard deviations
            std = max(float((b.sum(0) / total - mean_all**2).clamp(min=0.0).mean().sqrt()), 1e-8)
            mean = mean_all.expand(nt, dim).clone()
            if head.type_input:
                seen = n > 0
                mean[seen] = a[seen] / n[seen, None]
            head.input_mean.copy_(mean)
            head.input_std.fill_(std)
        self._energy_fn = None
        self._fit_output_scales(graphs, force_fraction)
        self.train(was_training)
        return True

    def _fit_output_scales(self, graphs: list[Any], force_fraction: float) -> None:
        """Set each head's ``scale`` to fraction * (data force RMS) / (force RMS of the network at unit scale)."""
        nh = len(self.heads)
        data_sq, net_sq, n = torch.zeros(nh, dtype=torch.float64), torch.zeros(nh, dtype=torch.float64), \
            torch.zeros(nh, dtype=torch.float64)
        saved = [head.scale.clone() for head in self.heads.values()]
        with torch.no_grad():
            for head in self.heads.values():
                head.scale.fill_(1.0)
        for g in graphs:
            forces = g[K.FORCES] if K.FORCES in g else None
            if forces is None:
                continue
            _, _, _, seg, ng = self._edge_sample(g)
            heads = self._graph_heads(g, ng)
            has = g[K.HAS_FORCES].reshape(-1).bool().cpu() if K.HAS_FORCES in g else torch.ones(ng, dtype=torch.bool)
            for h in range(nh):
                keep_graph = has & (torch.ones(ng, dtype=torch.bool) if heads is None else heads == h)
                if not bool(keep_graph.any()):
                    continue
                pred = self.forward(g, compute_forces=True, head=h)[K.FORCES].detach().double().cpu()
                atoms = keep_graph[seg.cpu()]
                data_sq[h] += forces.detach().double().cpu()[atoms].pow(2).sum()
                net_sq[h] += pred[atoms].pow(2).sum()
                n[h] += 3 * int(atoms.sum())
        with torch.no_grad():
            for h, head in enumerate(self.heads.values()):
                if n[h] > 0 and net_sq[h] > 0 and data_sq[h] > 0:
                    head.scale.fill_(force_fraction * float((data_sq[h] / net_sq[h]).sqrt()))
                else:
                    head.scale.copy_(saved[h])

    def types_from_numbers(self, numbers: Tensor) -> Tensor:
        """Type indices (N,) from atomic numbers; a clear error for elements outside the type map."""
        numbers = numbers.long()
        bad_z = (numbers < 0) | (numbers >= _MAX_Z)
        types = self.type_table[numbers.clamp(0, _MAX_Z - 1)]
        bad = bad_z | (types < 0)
        if bool(bad.any()):
            zs = sorted({int(z) for z in numbers[bad].tolist()})
            names = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in zs]
            raise ValueError(f"element(s) {names} not in the model's type map {self.type_map}")
        return types

    def resolve_heads(self, head: str | int | None, head_field: Tensor | None, num_graphs: int,
                      device: torch.device) -> Tensor:
        """Per-graph head indices (G,) from an explicit ``head`` argument or the batch's ``head`` field."""
        if head is not None:
            if isinstance(head, str):
                self._head_index(head)
                index = self.head_names.index(head)
            else:
                index = int(head)
            return torch.full((num_graphs,), index, dtype=torch.long, device=device)
        if head_field is not None:
            return head_field.reshape(-1).long().to(device)
        if len(self.heads) > 1:
            raise ValueError(f"this model has heads {self.head_names}: pass head=... or a batch 'head' field")
        return torch.zeros(num_graphs, dtype=torch.long, device=device)

    # ------------------------------------------------------------------ evaluation
    def compress(self, **kwargs: Any) -> bool:
        """Tabulate the descriptor's embedding for fast inference if it supports it (se_e2_a); returns
        whether it did. Training mode is unaffected."""
        fn = getattr(self.descriptor, "compress", None)
        if fn is None:
            return False
        fn(**kwargs)
        return True

    def compile_energy(self, method: str = "script", **compile_kwargs: Any) -> None:
        """Compile descriptor + heads for inference; forces and virial still come from autograd through it.

        ``method="script"`` (default) uses TorchScript: compiles in about a second, runs on CPU and GPU,
        and shares the parameters with this model. ``method="compile"`` uses ``torch.compile`` (dynamic
        shapes); it can fuse kernels on GPUs but takes minutes to compile on a small CPU. Compile after
        moving or converting the model (``.to``); head changes drop the compiled function.
        """
        core = EnergyCore(self.descriptor, self.heads, self.ntypes)
        if method == "script":
            with warnings.catch_warnings():  # TorchScript is deprecated upstream but still the fast CPU path
                warnings.simplefilter("ignore", DeprecationWarning)
                self._energy_fn = torch.jit.script(core)
        elif method == "compile":
            compile_kwargs.setdefault("dynamic", True)
            self._energy_fn = torch.compile(core, **compile_kwargs)
        else:
            raise ValueError(f"compile_energy method must be 'script' or 'compile', got {method!r}")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_energy_fn"] = None  # compiled functions are neither picklable nor deep-copyable
        return state

    def atomic_energies(self, types: Tensor, edge_index: Tensor, edge_vec: Tensor, atom_head: Tensor,
                        heads_present: list[int]) -> tuple[Tensor, Tensor]:
        """Per-atom energies (N,) and descriptor features (N, D); each head runs only on its own atoms."""
        if self._energy_fn is not None:
            return self._energy_fn(types, edge_index, edge_vec, atom_head, heads_present)
        return EnergyCore(self.descriptor, self.heads, self.ntypes)(types, edge_index, edge_vec, atom_head,
                                                                    heads_present)

    def forward(self, batch: Any, compute_forces: bool = True, compute_virial: bool = False,
                head: str | int | None = None, compute_direct: bool = False, return_features: bool = False
                ) -> dict[str, Tensor]:
        """Evaluate a batch (PyG Batch/Data or dict with the fields of :mod:`lam.data.keys`).

        Returns a dict with ``energy`` (G,), ``atomic_energy`` (N,), and when asked ``forces`` (N, 3),
        ``virial`` (G, 3, 3), ``stress`` (G, 3, 3) (``-W/V``; zero for graphs without volume),
        ``direct_forces`` (N, 3) and the descriptor ``features`` (N, D) (detached; see
        :meth:`direct_forces_from_features`).
        """
        dtype = self.dtype
        numbers = _field(batch, K.NUMBERS)
        if numbers is None:
            raise ValueError("batch needs 'numbers' and 'edge_index' fields")
        pos, edge_index, seg, cell, shifts, num_graphs = self._geometry(batch)
        device = pos.device
        types = self.types_from_numbers(numbers)
        graph_head = self.resolve_heads(head, _field(batch, K.HEAD), num_graphs, device)
        if bool(((graph_head < 0) | (graph_head >= len(self.heads))).any()):
            raise ValueError(f"head index out of range for heads {self.head_names}: {graph_head.tolist()}")
        heads_present = sorted(set(graph_head.tolist()))
        atom_head = graph_head[seg]

        need_grad = compute_forces or compute_virial
        with torch.set_grad_enabled(need_grad or torch.is_grad_enabled()):
            if need_grad and not pos.requires_grad:
                pos = pos.clone().requires_grad_(True)
            strain = None
            if compute_virial:
                strain = torch.zeros(num_graphs, 3, 3, device=device, dtype=dtype, requires_grad=True)
                pos_s = pos + torch.bmm(pos.unsqueeze(1), strain[seg]).squeeze(1)
                cell_s = cell + torch.bmm(cell, strain)
            else:
                pos_s, cell_s = pos, cell
            edge_vec = edge_vectors(pos_s, edge_index, shifts, cell_s, seg)
            atomic, feats = self.atomic_energies(types, edge_index, edge_vec, atom_head, heads_present)
            energy = atomic.new_zeros(num_graphs).index_add(0, seg, atomic)
            out: dict[str, Tensor] = {K.ENERGY: energy, K.ATOMIC_ENERGY: atomic}
            if need_grad:
                inputs = [pos] + ([strain] if strain is not None else [])
                grads = torch.autograd.grad(energy.sum(), inputs, create_graph=self.training, allow_unused=True)
                grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
                if compute_forces:
                    out[K.FORCES] = -grads[0]
                if strain is not None:
                    virial = -grads[1]
                    volume = torch.linalg.det(cell).abs()
                    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                    stress = torch.where((volume > 0)[:, None, None], -virial / safe[:, None, None],
                                         torch.zeros_like(virial))
                    out[K.VIRIAL] = virial
                    out[K.STRESS] = stress
            if compute_direct:
                if self.direct_force_head is None:
                    raise ValueError("compute_direct=True but the model has no direct_force_head")
                out[K.DIRECT_FORCES] = self.direct_force_head(feats, edge_index, edge_vec.detach()
                                                              if not self.training else edge_vec)
            if return_features:
                out[K.FEATURES] = feats.detach()
        return out

    def _geometry(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
        """Positions (model dtype), edges, graph index per atom, cells (G, 3, 3), shifts and graph count of a
        batch, with the defaults of a batch without ``batch``/``cell``/``shifts`` fields (one graph, no
        periodic images)."""
        dtype = self.dtype
        pos = _field(batch, K.POSITIONS)
        if pos is None:
            raise ValueError("batch has no 'pos' field")
        device = pos.device
        pos = pos.to(dtype)
        edge_index = _field(batch, K.EDGE_INDEX)
        if edge_index is None:
            raise ValueError("batch needs 'numbers' and 'edge_index' fields")
        edge_index = edge_index.long()
        n_atoms = pos.shape[0]
        seg = _field(batch, K.BATCH)
        seg = torch.zeros(n_atoms, dtype=torch.long, device=device) if seg is None else seg.long()
        cell = _field(batch, K.CELL)
        ptr = _field(batch, K.PTR)
        if ptr is not None:
            num_graphs = ptr.numel() - 1
        elif cell is not None:
            num_graphs = cell.reshape(-1, 3, 3).shape[0]
        else:
            num_graphs = int(seg.max()) + 1 if n_atoms else 1
        cell = (torch.zeros(num_graphs, 3, 3, device=device, dtype=dtype) if cell is None
                else cell.reshape(-1, 3, 3).to(dtype))
        shifts = _field(batch, K.SHIFTS)
        shifts = (torch.zeros(edge_index.shape[1], 3, device=device, dtype=dtype) if shifts is None
                  else shifts.to(dtype))
        return pos, edge_index, seg, cell, shifts, num_graphs

    def direct_forces_from_features(self, features: Tensor, batch: Any) -> Tensor:
        """Direct forces (N, 3) at the batch's positions from given descriptor ``features`` (N, D).

        With the features of an earlier evaluation (``return_features=True``) this is the direct head alone,
        without a descriptor pass: the *frozen-feature* inner force of multiple time stepping. For a head of
        ``kind="energy"`` it is the exact gradient of the head's local energy at those features. The batch
        only needs edges within the head's cutoff.
        """
        if self.direct_force_head is None:
            raise ValueError("direct_forces_from_features needs a model with a direct_force_head")
        pos, edge_index, seg, cell, shifts, _ = self._geometry(batch)
        if features.shape[0] != pos.shape[0]:
            raise ValueError(f"features are for {features.shape[0]} atoms, the batch has {pos.shape[0]}")
        edge_vec = edge_vectors(pos, edge_index, shifts, cell, seg)
        return self.direct_force_head(features.to(self.dtype), edge_index, edge_vec)
