"""torch.compile where it pays. The model's forward is nearly all of a dissection's time, and of the
saliency methods and feature visualizations that run the model many times; compiling it pays on a CPU
but costs tens of seconds once per process (the measured figures: benchmarks/RESULTS.md).

`Runner` wraps a function of tensors (the model's forward, with its hooks): it runs eagerly until
told how many calls remain, then compiles if those calls would save clearly more than the compile
costs (compile="auto"), always (True) or never (False). A function that cannot be compiled runs
eagerly after a one-line warning. Compiled code may differ from eager in the last float bits;
compile=False is the exact path.

A caller whose calls feed one result (a dissection) calls `warm_up(*args, calls=n)` before the first
counted call: the timed trial runs there on a sample batch, its outputs discarded, and the variant it
keeps (eager or compiled, the input as given or in channels_last) is then fixed for every later call
(`variant`); `use(variant, *args)` fixes a variant chosen elsewhere (a checkpoint's, rank 0's).
Without warm_up the trial and the compile happen among the calls (saliency, featviz).

Two things keep the compiled function at one graph, compiled once (each recompile of a CNN costs
about as much as the first compile on a CPU, benchmarks/RESULTS.md):
- the graph is specialized to the first batch size (a static graph: compiled faster, and it ran
  faster than one for any size, benchmarks/RESULTS.md, "one compiled graph"); with pad=True a smaller batch (a dataset's last) is padded up
  to it by repeating its last image, and the outputs are cut back to the batch's own images;
- `prepare()`, when given, runs before each compiled call, outside the graph: state the traced
  function reads (a capture's per-call dictionaries) is reset there, so torch's guards on that state
  see the same thing at every call.
"""
from __future__ import annotations

import time
import warnings

import torch

# A cold compile of EfficientNet-Lite0's forward on this project's 2-core CPU machine took 45-55 s
# (benchmarks/RESULTS.md); the compiled forward ran 2.5-3x the eager one, 1.4-1.8x the eager one in
# channels_last. "auto" compiles when the calls still to come are expected to save MARGIN times the
# compile time (a net gain of at least a quarter of it, with the speedup estimated low).
COMPILE_SECONDS = 50.0
SPEEDUP = 2.5
SPEEDUP_CHANNELS_LAST = 1.6  # the compiled forward against the eager one in channels_last (57 vs 32-42 img/s)
MARGIN = 1.25
# eager calls that alternate the contiguous and channels_last formats before one is kept
TRIAL_CALLS = 4
# eager calls timed before "auto" decides (and all of the channels_last trial's)
MIN_EAGER_CALLS = 2
# warm_up(): a run of fewer counted calls than this stays eager with the input as given under "auto"
# (the trial costs TRIAL_CALLS calls, channels_last saves well under half a call, and a compile of
# ~50 s does not pay back over so few calls)
TRIAL_MIN_CALLS = 16


def check_compile(value, name: str = "compile"):
    """compile="auto" | True | False, else ValueError naming the argument."""
    if value is not True and value is not False and value != "auto":
        raise ValueError(f"{name} must be 'auto', True or False, got {value!r}")
    return value


class Runner:
    """`runner(*tensors)` calls fn eagerly or compiled.

    Args:
        fn: the function to run (e.g. lambda x: model(preprocess(x))); tensors in, tensors out.
        traced: a function with fn's results that suits compiling better (e.g. without an early exit
            by exception), default fn.
        compile: "auto" (compile once `plan(calls_left)`, after MIN_EAGER_CALLS timed eager calls and
            the channels_last trial, expects the saving to pay), True (compile at
            the first call) or False (never).
        log: callable taking a one-line message (e.g. tqdm.write), or None for silence.
        what: how messages name the function ("the model").
        pad: every tensor the function returns has one row per image of its first argument (the
            batch): smaller batches are padded to the compiled batch size and the outputs cut back.
            Not for functions returning batch totals (a loss summed over images).
        prepare: callable run before each compiled call, outside the compiled graph, or None.
        channels_last: with compile="auto", the eager calls also try the first argument (a 4-D image
            batch) in channels_last memory format, alternating for the first TRIAL_CALLS calls, and
            keep it when it was faster (oneDNN's convolutions ran EfficientNet-Lite0 faster so,
            benchmarks/RESULTS.md; the results differ in the last float bits, like a compiled model's); a function that
            fails on it runs on the batch as given. compile=False never changes the input.
    """

    def __init__(self, fn, compile="auto", *, traced=None, log=None, what: str = "the model",
                 pad: bool = False, prepare=None, channels_last: bool = False):
        self.fn = fn
        self.traced = fn if traced is None else traced  # what torch.compile compiles (same results as fn)
        self.setting = check_compile(compile)
        self.log = log
        self.what = what
        self.pad = pad
        self.prepare = prepare
        self.batch = None            # the batch size the compiled graph was specialized to
        self.compiled_fn = None      # the torch.compile'd fn once compiled
        self.failed = False          # compiling failed: eager from then on
        self.verified = False        # the compiled fn has run once without error
        self.eager_calls = 0
        self.fastest_call = float("inf")  # seconds of the fastest eager call (the estimate for "auto")
        # eager calls in channels_last: None (not tried), "trial", True (kept) or False (slower or failing)
        self.channels_last = "trial" if channels_last and self.setting == "auto" else None
        self._trial = {False: float("inf"), True: float("inf")}  # fastest call per format in the trial
        self.fixed = False           # warm_up()/use() fixed the variant: no trial, no compile from here on
        self.eager_calls_fixed = 0   # eager calls since then

    @property
    def compiled(self) -> bool:
        """True once the calls go through the compiled function."""
        return self.compiled_fn is not None

    @property
    def variant(self) -> tuple[bool, bool]:
        """(compiled, channels_last): how the calls run now (channels_last: eager calls take the input
        in channels_last memory format; compiled calls take it as given)."""
        return self.compiled, self.channels_last is True and not self.compiled

    def warm_up(self, *args, calls: int) -> None:
        """Fix the variant before the first counted call, for the `calls` calls to come (args: a
        sample of them, e.g. the first batch). "auto": with at least TRIAL_MIN_CALLS calls to come,
        TRIAL_CALLS timed eager calls alternate the input as given and channels_last (MIN_EAGER_CALLS
        as given without channels_last) and keep the faster format, then compile when the saving pays;
        fewer calls: eager, the input as given. True: compile. A compile is tried here on args (a
        failing one falls back to eager with a warning, still before any counted call). Every output
        is discarded. From here on no call changes the variant."""
        if self.fixed:
            return
        if self.setting == "auto" and calls >= TRIAL_MIN_CALLS:
            image = bool(args) and isinstance(args[0], torch.Tensor) and args[0].dim() == 4
            trial = self.channels_last == "trial" and image
            for _ in range(TRIAL_CALLS if trial else MIN_EAGER_CALLS):
                if self.channels_last != "trial" and trial:
                    break  # the function failed on channels_last: the input as given decides
                self._run_eager(*args)
            self.channels_last = self.channels_last is True
            self.plan(calls)
        self.use(self.variant if self.setting is not True else (True, False), *args)

    def use(self, variant: tuple[bool, bool], *args) -> tuple[bool, bool]:
        """Fix the variant (compiled, channels_last) for every later call; a compiled or channels_last
        one is tried once on args (output discarded). Returns the variant obtained: eager where the
        compile failed (with a warning), the input as given where channels_last failed."""
        compiled, channels_last = (bool(v) for v in variant)
        if self.fixed and (compiled, channels_last) == self.variant:
            return self.variant  # (already tried)
        self.channels_last = channels_last
        if compiled and not self.compiled and not self.failed:
            self._compile()
        elif not compiled:
            self.compiled_fn = None
        self.fixed = True
        if self.compiled or channels_last:
            self(*args)
        return self.variant

    def plan(self, calls_left: int) -> None:
        """Decide whether to compile for the `calls_left` calls still to come (like the ones timed)."""
        if self.compiled or self.failed or self.setting is False or self.fixed:
            return
        if self.setting is True:
            self._compile()
            return
        if self.eager_calls < MIN_EAGER_CALLS or self.channels_last == "trial" or calls_left <= 0:
            return  # a first call carries one-time costs (it ran 1.5-2x the next ones): not a basis
        per_call = self.fastest_call
        speedup = SPEEDUP_CHANNELS_LAST if self._trial[True] < self._trial[False] else SPEEDUP
        saving = calls_left * per_call * (1.0 - 1.0 / speedup)
        if saving > MARGIN * COMPILE_SECONDS:
            if self.log is not None:
                self.log(f"compiling {self.what} (about {COMPILE_SECONDS:.0f} s, saves ~{saving / 60:.0f} min "
                         f"on this run; compile=False to skip)")
            self._compile()

    def _compile(self):
        # dynamic=None (torch's default): a graph specialized to the first shapes; a second size of a
        # larger batch recompiles once to a graph for any size (smaller ones are padded when pad=True)
        self.compiled_fn = torch.compile(self.traced)

    def _run_compiled(self, *args):
        if self.prepare is not None:
            self.prepare()
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return self.compiled_fn(*args)
        n = x.shape[0]
        if self.batch is None:
            self.batch = n
        if not self.pad or n >= self.batch or n == 0:
            return self.compiled_fn(*args)
        filler = x[-1:].expand(self.batch - n, *x.shape[1:])
        out = self.compiled_fn(torch.cat([x, filler]), *args[1:])
        return torch.utils._pytree.tree_map(
            lambda t: t[:n] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == self.batch else t, out)

    def __call__(self, *args):
        if self.setting is True and not self.compiled and not self.failed and not self.fixed:
            self._compile()
        if self.compiled_fn is not None:
            if self.verified:
                return self._run_compiled(*args)
            try:
                out = self._run_compiled(*args)
                self.verified = True
                return out
            except Exception as e:  # noqa: BLE001 - any compiler failure; eager decides if it's the input's fault
                self.compiled_fn, self.failed = None, True
                out = self.fn(*args)  # the caller's own error, if any, raises here
                warnings.warn(f"unitscope: could not compile {self.what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running it eagerly", stacklevel=2)
                return out
        return self._run_eager(*args)

    def _run_eager(self, *args):
        x = args[0] if args else None
        use_cl = False
        if self.channels_last is not None and isinstance(x, torch.Tensor) and x.dim() == 4:
            use_cl = self.channels_last is True or (self.channels_last == "trial" and self.eager_calls % 2 == 1)
        t = time.perf_counter()
        if use_cl:
            try:
                out = self.fn(x.contiguous(memory_format=torch.channels_last), *args[1:])
            except Exception:  # noqa: BLE001 - e.g. a .view() on the input; the batch as given decides
                if self.fixed and self.eager_calls_fixed:
                    raise  # a fixed variant that already ran: switching now would mix arithmetics
                self.channels_last = False
                return self._run_eager(*args)
        else:
            out = self.fn(*args)
        trial = self.channels_last == "trial" and isinstance(x, torch.Tensor) and x.dim() == 4
        if (self.setting == "auto" and not self.fixed) or trial:  # (the trial ends even if setting changed)
            if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
                torch.cuda.synchronize()  # time the work, not the launches
            took = time.perf_counter() - t
            self.fastest_call = min(self.fastest_call, took)
            if trial:
                self._trial[use_cl] = min(self._trial[use_cl], took)
                if self.eager_calls + 1 >= TRIAL_CALLS:
                    self.channels_last = self._trial[True] < self._trial[False]
        self.eager_calls += 1
        self.eager_calls_fixed += self.fixed
        return out
