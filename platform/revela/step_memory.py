"""Where a Revela step's memory goes: what autograd keeps for backward, by part of the step, and the peak.

`SavedMemory(model)` is a context manager around a RevelaModel forward. Every tensor autograd saves for backward
(`torch.autograd.graph.saved_tensors_hooks`) is attributed to the part of the step that saved it:

  retriever             both views through the retriever backbone, pooling and Sim
  lm pass 2             the LM over each chunk alone
  captured keys/values  pass 2's post-RoPE keys/values, which pass 3's in-batch attention reads (kept with gradient)
  in-batch attention    what the in-batch term itself keeps (queries, weights, statistics)
  lm pass 3             the LM with the in-batch term, except the term itself
  logits + CE           the head and the cross-entropy of either pass
  other                 anything else

`report()` (call it after the forward, before backward) counts each storage once, only while autograd still holds
it, leaves parameters out, and names the largest holders by module path (layer indices folded into `*`).
Tensors kept by checkpointed regions as their inputs are counted too (torch saves them through the same hooks);
pass 3's captured keys/values held only by a checkpointed layer's arguments are added from the pass-2 state.

`PhaseRanges(model)` marks the same parts as profiler ranges, and `phase_times(prof.events(), device)` splits a
profiled step's time by part, backward included (each backward node counts for the part that created it).

`cpu_allocations(fn)` runs `fn` under torch's profiler with memory profiling: the CPU allocator's bytes over time
(above what was allocated before), to read the peak and the bytes live at marked points (e.g. after the forward).
On a GPU, `torch.cuda.max_memory_allocated` says the same.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from revela.lm_passes import lm_body

CATEGORIES = ("retriever", "lm pass 2", "captured keys/values", "in-batch attention", "lm pass 3", "logits + CE",
              "other")


@dataclass(eq=False)
class _Packed:
    tensor: torch.Tensor
    category: str
    module: str


def module_path(name: str) -> str:
    """A module's name with peft's wrapper prefixes dropped and layer indices folded: `lm.model.layers.*.mlp`."""
    name = name.replace("base_model.model.", "").replace(".default", "")
    return re.sub(r"\.(\d+)(?=\.|$)", ".*", name)


class StepPhases:
    """Which part of a Revela step is running, from module hooks (retriever backbone, LM body per pass, LM head) and
    a wrapper of the in-batch attention function; between them, the part that ran last (pooling and Sim belong to
    the retriever, the cross-entropy to "logits + CE"). Subclasses act on `_changed(old, new)`."""

    def __init__(self, model: nn.Module, track_modules: bool = False):
        self.model = model
        self.track_modules = track_modules
        self.names = {id(m): n for n, m in model.named_modules()}
        self.states: list[weakref.ref] = []
        self.captured: set[int] = set()
        self._phases: list[str] = []
        self._modules: list[str] = []
        self._tail = "other"

    @property
    def phase(self) -> str:
        return self._phases[-1] if self._phases else self._tail

    def _changed(self, old: str, new: str) -> None:
        pass

    def _push(self, name: str) -> None:
        old = self.phase
        self._phases.append(name)
        if name != old:
            self._changed(old, name)

    def _pop(self, tail: str) -> None:
        old = self.phase
        if self._phases:
            self._phases.pop()
        if not self._phases:
            self._tail = tail
        if self.phase != old:
            self._changed(old, self.phase)

    def _enter_module(self, module, _inputs):
        self._modules.append(module_path(self.names.get(id(module), type(module).__name__)))

    def _leave_module(self, module, _inputs, _output):
        if self._modules:
            self._modules.pop()

    def _phase_hooks(self, module: nn.Module, name: str, tail: str) -> list:
        return [module.register_forward_pre_hook(lambda *_: self._push(name)),
                module.register_forward_hook(lambda *_: self._pop(tail), always_call=True)]

    def _enter_decoder(self, module, args, kwargs):
        from revela.inbatch_lm import STATE_KWARG

        state = kwargs.get(STATE_KWARG)
        if state is not None:
            self.states.append(weakref.ref(state))
        self._push("lm pass 2" if state is None or state.capture else "lm pass 3")

    def _leave_decoder(self, module, args, kwargs, output):
        from revela.inbatch_lm import STATE_KWARG

        state = kwargs.get(STATE_KWARG)
        if state is not None and state.capture:  # what pass 3 will read, while it is surely alive
            self.captured |= {t.untyped_storage().data_ptr() for t in (*state.keys.values(), *state.values.values())}
        self._pop("logits + CE")

    def __enter__(self):
        import revela.inbatch_lm as inbatch_lm

        self.states, self.captured, self._phases, self._modules, self._tail = [], set(), [], [], "other"
        model = self.model
        handles = []
        if self.track_modules:
            handles += [nn.modules.module.register_module_forward_pre_hook(self._enter_module),
                        nn.modules.module.register_module_forward_hook(self._leave_module, always_call=True)]
        handles += self._phase_hooks(model.retriever.backbone, "retriever", "retriever")
        decoder = lm_body(model.lm)
        handles += [decoder.register_forward_pre_hook(self._enter_decoder, with_kwargs=True),
                    decoder.register_forward_hook(self._leave_decoder, with_kwargs=True, always_call=True)]
        handles += self._phase_hooks(model.lm.get_output_embeddings(), "logits + CE", "logits + CE")
        self._handles = handles
        attention = inbatch_lm.inbatch_attention

        def attributed(*args, **kwargs):
            tail = self.phase
            self._push("in-batch attention")
            try:
                return attention(*args, **kwargs)
            finally:
                self._pop(tail)

        self._restore = (inbatch_lm, attention)
        inbatch_lm.inbatch_attention = attributed
        return self

    def __exit__(self, *exc) -> None:
        module, attention = self._restore
        module.inbatch_attention = attention
        for handle in self._handles:
            handle.remove()


class SavedMemory(StepPhases):
    """What autograd saves while the forward runs, by phase and module (see the module's docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__(model, track_modules=True)
        self.records: list[weakref.ref] = []

    def _pack(self, tensor: torch.Tensor):
        packed = _Packed(tensor, self.phase, self._modules[-1] if self._modules else "")
        self.records.append(weakref.ref(packed))
        return packed

    @staticmethod
    def _unpack(packed: _Packed) -> torch.Tensor:
        return packed.tensor

    def __enter__(self) -> "SavedMemory":
        super().__enter__()
        self.records = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        super().__exit__(*exc)

    # ---------------------------------------------------------------------------------------------- report

    def report(self, top: int = 5) -> dict:
        """Bytes autograd holds now, per category, and the `top` largest holders (category, module, shape, dtype)."""
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        params |= {b.untyped_storage().data_ptr() for b in self.model.buffers()}
        kv = {}
        for ref in self.states:
            state = ref()
            if state is not None:
                for t in (*state.keys.values(), *state.values.values()):
                    kv[t.untyped_storage().data_ptr()] = t
        seen: dict[int, tuple] = {}
        for ref in self.records:
            packed = ref()
            if packed is None or packed.tensor is None or packed.tensor.device.type == "meta":
                continue
            self._count(seen, packed.tensor, packed.category, packed.module, params, kv)
        for t in kv.values():  # held only through a checkpointed layer's arguments, if at all
            self._count(seen, t, "captured keys/values", "lm.model.layers.*.self_attn", params, kv)
        by_category = dict.fromkeys(CATEGORIES, 0)
        holders: dict[tuple, list] = {}
        for category, module, shape, dtype, nbytes in seen.values():
            by_category[category] += nbytes
            entry = holders.setdefault((category, module, shape, dtype), [0, 0])
            entry[0] += nbytes
            entry[1] += 1
        ranked = sorted(holders.items(), key=lambda kv_: -kv_[1][0])
        return {"saved_bytes": sum(by_category.values()), "by_category": by_category,
                "top": [{"category": c, "module": m, "shape": list(s), "dtype": d, "bytes": b, "count": n}
                        for (c, m, s, d), (b, n) in ranked[:top]],
                "holders": len(holders)}

    def _count(self, seen, t, category, module, params, kv) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() == 0 or key in params or key in seen:
            return
        if key in kv or key in self.captured:
            category = "captured keys/values"
        seen[key] = (category, module, tuple(t.shape), str(t.dtype).removeprefix("torch."), storage.nbytes())


RANGE = "revela:"


class PhaseRanges(StepPhases):
    """Marks each phase of the forward as a profiler range `revela:<phase>` (ranges follow one another, never nest),
    so `phase_times` can split a profiled step's time by phase, backward included."""

    def _open(self, name: str) -> None:
        from torch.autograd.profiler import record_function

        self._close()
        self._range = record_function(RANGE + name)
        self._range.__enter__()

    def _close(self, *_args) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def _changed(self, old: str, new: str) -> None:
        if self._range is not None:  # only while the model's forward runs
            self._open(new)

    def __enter__(self) -> "PhaseRanges":
        super().__enter__()
        self._range = None
        self._handles += [self.model.register_forward_pre_hook(lambda *_: self._open(self.phase)),
                          self.model.register_forward_hook(self._close, always_call=True)]
        return self

    def __exit__(self, *exc) -> None:
        self._close()
        super().__exit__(*exc)


def phase_times(events, device: bool) -> dict[str, float]:
    """Microseconds per phase of a profiled step (`prof.events()`): each forward range's own time, and each backward
    node's time given to the phase whose forward op created it (autograd sequence numbers; recomputation inside a
    node counts for that node's phase). `revela:optimizer` ranges count as "optimizer"; the rest is "other".
    `device`: time of the GPU kernels each op launched, else CPU time."""
    def spent(e) -> float:
        return e.device_time_total if device else e.cpu_time_total

    def label(e) -> str | None:
        while e is not None:
            if e.name.startswith(RANGE):
                return e.name.removeprefix(RANGE)
            e = e.cpu_parent
        return None

    def inside_backward(e) -> bool:
        e = e.cpu_parent
        while e is not None:
            if e.name.startswith(BACKWARD):
                return True
            e = e.cpu_parent
        return False

    created: dict[int, str] = {}
    times: dict[str, float] = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith(BACKWARD) and not inside_backward(e):
            created.setdefault(e.sequence_nr, label(e) or "other")
    for e in events:
        if e.name.startswith(RANGE) and not inside_backward(e):
            name = e.name.removeprefix(RANGE)
            times[name] = times.get(name, 0.0) + spent(e)
        elif e.name.startswith(BACKWARD) and not inside_backward(e):
            name = created.get(e.sequence_nr, "other") if e.sequence_nr >= 0 else "other"
            times[name] = times.get(name, 0.0) + spent(e)
    return times


BACKWARD = "autograd::engine::evaluate_function:"


class Allocations:
    """Bytes allocated over time while a function ran (torch's profiler, CPU allocator), above what was allocated
    before it started, with named marks: `peak()`, `peak(until="forward")`, `at("forward")`."""

    def __init__(self, totals: list[tuple[int, int, int]], marks: dict[str, int]):
        totals = sorted(totals)
        # the allocator's running total counts from an earlier profile too (frees outside a profile are not seen)
        base = totals[0][1] - totals[0][2] if totals else 0
        self.totals, self.marks = [(t, total - base) for t, total, _ in totals], marks

    def peak(self, until: str | None = None) -> int:
        end = self.marks[until] if until else float("inf")
        return max([total for t, total in self.totals if t <= end], default=0)

    def at(self, mark: str) -> int:
        before = [total for t, total in self.totals if t <= self.marks[mark]]
        return before[-1] if before else 0


def cpu_allocations(fn) -> Allocations:
    """Run `fn(mark)` under the profiler; `mark(name)` records a point in time to read the allocations at."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark(name: str) -> None:
        with record_function(MARK + name):
            pass

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(mark)
    totals, marks = [], {}
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            fields = event.extra_fields
            totals.append((event.start_time_ns, fields.total_allocated, fields.alloc_size))
        elif event.name.startswith(MARK):
            marks[event.name.removeprefix(MARK)] = event.start_time_ns
    return Allocations(totals, marks)


MARK = "revela_mark:"
