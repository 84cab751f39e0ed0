"""Launchers beside torchrun: Accelerate and DeepSpeed. `accelerate launch -m upsample train CONFIG`
runs the trainer under Hugging Face Accelerate: its process state starts the process group (gloo on the CPU, nccl on
CUDA), decides this process's rank and device, and its `prepare_model` wraps the networks for
several processes (DDP). Everything else is the loop's own, as under torchrun: each rank draws its
samples, rank 0 validates and writes the run dir, `--resume` continues from last_state.pt.

Precision and compilation stay the recipe's (train.amp, train.compile): an `accelerate launch
--mixed_precision` or `--dynamo_backend` other than "no" is refused with the setting to use
instead, so that one knob decides and the run dir records it.

`deepspeed --module upsample train CONFIG` (or `--module --no_local_rank`) runs it under DeepSpeed:
`deepspeed.initialize` wraps the model and the recipe's own optimizer (ZeRO stage 0 or 1, fp32 or
DeepSpeed's bf16/fp16 training from the recipe's [deepspeed] section or a DeepSpeed JSON) and the
step becomes `engine.backward(loss)` / `engine.step()`, which also reduce the gradients and clip
them. Its checkpoint (`engine.save_checkpoint`: the module, and each rank's optimizer shard) goes
to <run dir>/deepspeed/<tag>, named by last_state.pt, which holds the rest as under torchrun.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError
from ..runtime.hardware import cpu_has_bf16
from . import config as config_mod

# set by `accelerate launch` (every launcher of it) in the processes it starts
ACCELERATE_MARK = "ACCELERATE_MIXED_PRECISION"
# set by DeepSpeed's launcher (deepspeed.launcher.launch: the node's rank and the node count)
DEEPSPEED_MARKS = ("CROSS_RANK", "CROSS_SIZE", "LOCAL_SIZE")


def runs_on_cpu(device: str | None) -> bool:
    """Whether a launcher's processes train on the CPU for `--device` (None: CUDA where torch
    sees a GPU); one line for a device neither launcher takes."""
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
    return device == "cpu" or not torch.cuda.is_available()


class AccelerateEngine:
    """The processes and the network wrapping of Accelerate (`Accelerator`)."""

    name = "accelerate"

    def __init__(self, device: str | None):
        mixed = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").lower()
        if mixed != "no":
            raise UserError(f"accelerate launch --mixed_precision {mixed}: the trainer's precision is "
                            f"train.amp (--set train.amp='\"{mixed}\"'); launch with --mixed_precision no")
        if dynamo != "no":
            raise UserError(f"accelerate launch --dynamo_backend {dynamo}: the trainer compiles with "
                            "train.compile (--set train.compile=true); launch with --dynamo_backend no")
        on_cpu = runs_on_cpu(device)
        from accelerate import Accelerator
        self.accelerator = Accelerator(cpu=on_cpu, mixed_precision="no")

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def describe(self) -> str:
        return "accelerate"

    def check(self, cfg: config_mod.Config) -> config_mod.Config:
        return cfg  # its precision flags were checked at the start

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` as the step runs it on several processes (Accelerate's DDP wrapper), or as it
        is in one process."""
        return self.accelerator.prepare_model(model)


def from_launcher(device: str | None) -> AccelerateEngine | DeepSpeedEngine | None:
    """The engine of the launcher that started this process, None for torchrun or a plain start."""
    if all(mark in os.environ for mark in DEEPSPEED_MARKS):
        return DeepSpeedEngine(device)
    if ACCELERATE_MARK not in os.environ:
        return None
    try:
        import accelerate  # noqa: F401  (the optional `distributed` extra)
    except ImportError:
        raise UserError("started by accelerate launch, but the accelerate package is not "
                        "importable here: pip install 'upsample[distributed]'") from None
    return AccelerateEngine(device)


class DeepSpeedEngine:
    """The processes, the wrapped network, the step and the checkpoints of DeepSpeed."""

    name = "deepspeed"
    DIR = "deepspeed"  # its checkpoints, in the run dir
    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, device: str | None):
        on_cpu = runs_on_cpu(device)
        if on_cpu:  # before DeepSpeed picks its accelerator (CUDA whenever torch sees one)
            os.environ["DS_ACCELERATOR"] = "cpu"
        venv_bin = os.path.dirname(sys.executable)  # the `ninja` package's binary, for DeepSpeed's op build
        if shutil.which("ninja") is None and shutil.which("ninja", path=venv_bin):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")
        try:
            import deepspeed
        except ImportError:
            raise UserError("started by the deepspeed launcher, but the deepspeed package is not "
                            "importable here: pip install 'upsample[distributed]'") from None
        self.ds = deepspeed
        deepspeed.init_distributed()  # gloo (or oneCCL) on the CPU, nccl on CUDA
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cpu") if on_cpu else torch.device("cuda", local)
        if not on_cpu:
            torch.cuda.set_device(self.device)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if on_cpu:
            release_shm_buffer(self.rank)
        self.zero_stage, self.precision, self.tag, self.saved = 0, "fp32", None, None
        self.engine, self._fp32_copy = None, None

    @property
    def input_dtype(self) -> torch.dtype | None:
        """The dtype the network computes in under DeepSpeed's 16-bit training (None: fp32)."""
        return self.DTYPES[self.precision]

    def describe(self) -> str:
        return f"deepspeed ZeRO-{self.zero_stage} {self.precision}"

    def check(self, cfg: config_mod.Config) -> config_mod.Config:
        """`cfg` as this engine runs it (DeepSpeed settings read, train.amp/compile "auto" decided),
        or one line on what it cannot run."""
        if cfg.gan.discriminator:
            raise UserError("a [gan] recipe under deepspeed: the discriminator's own optimizer is not "
                            "wired to DeepSpeed here; launch it with torchrun")
        if cfg.optim.clip and (cfg.optim.clip_type != "norm" or cfg.optim.clip_adjustable):
            raise UserError("optim.clip under deepspeed is its gradient_clipping (total norm): set "
                            "optim.clip_type = \"norm\" and optim.clip_adjustable = false")
        if cfg.train.compile is True:
            raise UserError("train.compile = true under deepspeed: not supported; set train.compile = false")
        self.settings = self._settings(cfg)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise UserError("deepspeed fp16 needs CUDA; on the CPU use " + (
                "bf16" if cpu_has_bf16() else "fp32 (this CPU has no bf16 units)"))
        if self.zero_stage == 0 and self.precision != "fp32":
            # ZeRO-0 16-bit is DeepSpeed's FP16_UnfusedOptimizer: gradients summed in 16 bits and
            # fp32 masters that safe_get_full_fp32_param cannot read (EMA/saves would be rounded)
            raise UserError(f"deepspeed {self.precision} with ZeRO stage 0 is not supported here; use "
                            "ZeRO stage 1 (deepspeed.zero_stage = 1), or fp32 with train.amp = \"bf16\" "
                            "(a run saved so continues only as a new run: --init its last.safetensors)")
        if self.input_dtype is not None and cfg.train.amp not in ("none", "auto"):
            raise UserError(f"train.amp = {cfg.train.amp!r} and deepspeed {self.precision}: the network is "
                            f"already {self.precision} under DeepSpeed; set train.amp = \"none\"")
        train = dataclasses.replace(cfg.train, compile=False,
                                    amp="none" if self.input_dtype is not None else cfg.train.amp)
        return dataclasses.replace(cfg, train=train)

    def _settings(self, cfg: config_mod.Config) -> dict:
        """DeepSpeed's config: the [deepspeed] section's or its JSON's ZeRO, precision and
        communication settings, with the batch sizes and clipping of the recipe."""
        ds = cfg.deepspeed
        table = read_deepspeed_json(ds) if ds.config else {
            "zero_optimization": {"stage": ds.zero_stage},
            "bf16": {"enabled": ds.precision == "bf16"}, "fp16": {"enabled": ds.precision == "fp16"}}
        self.zero_stage, self.precision = zero_stage_of(table), precision_of(table)
        if self.zero_stage not in (0, 1):
            raise UserError(f"deepspeed ZeRO stage {self.zero_stage}: use 0 or 1 (the models here "
                            "are small; stages 2 and 3 shard what fits on one device anyway)")
        micro = cfg.data.batch_size // cfg.train.accumulate
        ours = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": cfg.train.accumulate,
                "train_batch_size": cfg.data.batch_size * self.world, "gradient_clipping": cfg.optim.clip}
        for key, value in ours.items():
            if key in table and table[key] != value:
                raise UserError(f"deepspeed.config: {key} = {table[key]} but the recipe makes it {value} "
                                "(data.batch_size, train.accumulate, optim.clip); remove it from the JSON")
        return {"steps_per_print": 2**31 - 1, **table, **ours,
                "zero_allow_untested_optimizer": True}  # the recipe's torch optimizer

    def wrap(self, model: nn.Module, opt: torch.optim.Optimizer) -> nn.Module:
        """The DeepSpeed engine around `model` and the recipe's optimizer `opt` (whose
        param_groups the recipe's scheduler keeps setting)."""
        if self.input_dtype is not None:  # fp32 weights to validate and save, refreshed from masters
            self._fp32_copy = copy.deepcopy(model).eval().requires_grad_(False)
        self.engine, *_ = self.ds.initialize(model=model, optimizer=opt, config=self.settings,
                                             dist_init_required=False)
        return self.engine

    def backward_step(self, loss: torch.Tensor) -> None:
        """Backward, gradient reduction, clipping and (at an accumulation boundary) the update."""
        self.engine.backward(loss)
        self.engine.step()

    def fp32_weights(self, model: nn.Module) -> dict:
        """`model`'s state dict in fp32 (collective): DeepSpeed's fp32 master weights in its 16-bit
        modes, the network's own tensors otherwise."""
        if self.input_dtype is None:
            return model.state_dict()
        from deepspeed.utils import safe_get_full_fp32_param
        params = dict(model.named_parameters())
        out = {}
        for name, t in model.state_dict().items():
            master = safe_get_full_fp32_param(params[name]) if name in params else None
            out[name] = master if master is not None else t.float() if t.is_floating_point() else t
        return out

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network to validate and save (collective): itself, or in 16-bit modes an fp32
        copy holding the master weights."""
        if self._fp32_copy is None:
            return model
        self._fp32_copy.load_state_dict(self.fp32_weights(model))
        return self._fp32_copy

    def save(self, run_dir: Path, step: int) -> None:
        """DeepSpeed's checkpoint of this step (collective: every rank writes its shard); `saved`
        is what last_state.pt keeps of it."""
        self.tag = f"step{step}"
        self.engine.save_checkpoint(str(run_dir / self.DIR), tag=self.tag, save_latest=False)
        self.saved = {"tag": self.tag, "zero_stage": self.zero_stage, "precision": self.precision,
                      "world": self.world}

    def drop_older(self, run_dir: Path) -> None:
        """After last_state.pt names the new checkpoint (every rank waits for that), the older
        ones go; a kill before leaves the previous pair intact."""
        dist.barrier()
        for old in (run_dir / self.DIR).glob("step*"):
            if old.name != self.tag:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, run_dir: Path, saved: dict | None) -> None:
        """Continue from the DeepSpeed checkpoint last_state.pt names (module and optimizer)."""
        if not saved:
            raise UserError(f"--resume: {run_dir} was not trained under deepspeed; resume it with "
                            "the launcher it was trained with, or start a new run with --init")
        if (saved["zero_stage"], saved["precision"]) != (self.zero_stage, self.precision) or (
                self.zero_stage and saved["world"] != self.world):
            raise UserError(f"--resume: {run_dir} was trained with deepspeed ZeRO-{saved['zero_stage']} "
                            f"{saved['precision']} on {saved['world']} processes; resume it so (now "
                            f"ZeRO-{self.zero_stage} {self.precision} on {self.world})")
        path, _ = self.engine.load_checkpoint(str(run_dir / self.DIR), tag=saved["tag"],
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise UserError(f"--resume: DeepSpeed checkpoint {run_dir / self.DIR / saved['tag']} "
                            "is missing; every rank needs the run dir (a shared filesystem)")
        self.tag, self.saved = saved["tag"], saved


def release_shm_buffer(rank: int) -> None:
    """Unlink this rank's /dev/shm buffer of DeepSpeed's CPU all-reduce, which DeepSpeed never
    unlinks: each CPU run left 67 MB of RAM per rank in /dev/shm until reboot (19 GB here after
    some weeks of tests). `init_distributed` returns once this rank has mapped every other rank's
    buffer; after a barrier every rank has, so the names can go: the mappings live on until the
    processes end, and the memory goes with them, also after a crash."""
    port = os.environ.get("MASTER_PORT")
    if port is None:
        return
    dist.barrier()
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{port}_{rank}"
    try:
        os.unlink(Path("/dev/shm") / name)
    except OSError:
        pass  # not made (a build of DeepSpeed without the shm op, ranks on several nodes)


def zero_stage_of(table: dict) -> int:
    """The ZeRO stage a DeepSpeed config asks for (0 where it says none)."""
    zero = table.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    try:  # DeepSpeed reads "1" and 1.0 as stage 1 too
        if not isinstance(stage, bool) and float(stage) == int(float(stage)):
            return int(float(stage))
    except (TypeError, ValueError):
        pass
    raise UserError(f"deepspeed.config: zero_optimization must be an object with an integer "
                    f"\"stage\", got {json.dumps(zero)}")


def precision_of(table: dict) -> str:
    """"bf16", "fp16" or "fp32": what a DeepSpeed config's bf16 (or bfloat16) / fp16 sections enable."""
    enabled = []
    # "bfloat16" is read only where "bf16" is absent, as DeepSpeed reads it
    for name, key in (("bf16", "bf16" if "bf16" in table else "bfloat16"), ("fp16", "fp16")):
        if key not in table:
            continue
        section = table[key]
        flag = section.get("enabled", False) if isinstance(section, dict) else None
        if flag in (0, 1):  # true/false, or 0/1 as DeepSpeed also takes them
            flag = bool(flag)
        if not isinstance(flag, bool):  # e.g. "auto", the Hugging Face Trainer's placeholder
            raise UserError(f"deepspeed.config: {key} must be an object whose \"enabled\" is true "
                            f"or false, got {json.dumps(section)}")
        if flag:
            enabled.append(name)
    if len(set(enabled)) > 1:
        raise UserError("deepspeed.config enables both bf16 and fp16: keep one")
    return enabled[0] if enabled else "fp32"


def read_deepspeed_json(ds: config_mod.DeepSpeedConfig) -> dict:
    """The DeepSpeed JSON deepspeed.config names, checked for what the recipe decides itself."""
    if ds.zero_stage or ds.precision != "fp32":
        raise UserError("deepspeed.config is given: set ZeRO and precision in that JSON, not also "
                        "deepspeed.zero_stage / deepspeed.precision")
    try:
        table = json.loads(Path(ds.config).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"deepspeed.config {ds.config}: cannot read it as JSON ({exc})") from None
    if not isinstance(table, dict):
        raise UserError(f"deepspeed.config {ds.config}: expected a JSON object")
    for key, ours in (("optimizer", "[optim]"), ("scheduler", "[sched]")):
        if key in table:
            raise UserError(f"deepspeed.config {ds.config}: its {key!r} is the recipe's {ours} "
                            "here; remove it from the JSON")
    refuse_unsupported(table, ds.config)
    return table


def enabled(section) -> bool:
    """Whether a DeepSpeed config section that has an "enabled" flag is on (present: on unless
    it says otherwise, as DeepSpeed reads an offload section by its device)."""
    if not isinstance(section, dict):
        return bool(section)
    if "device" in section:  # offload_optimizer / offload_param
        return str(section["device"]).lower() not in ("none", "")
    return section.get("enabled", True) not in (False, 0)


def refuse_unsupported(table: dict, path: str) -> None:
    """One line for a DeepSpeed JSON setting the trainer does not run (DeepSpeed stopped on
    some with a traceback, or would train differently from what the run dir records)."""
    zero = table.get("zero_optimization")
    for key in ("offload_optimizer", "offload_param"):
        if isinstance(zero, dict) and enabled(zero.get(key, {"device": "none"})):
            raise UserError(f"deepspeed.config {path}: zero_optimization.{key} (ZeRO-Offload) is not "
                            "supported here: it needs DeepSpeed's own CPU optimizer, and the recipe's "
                            "[optim] is a torch optimizer (the models fit on one device); remove it")
    for key, instead in (("amp", "the JSON's bf16/fp16 sections (Apex AMP is gone from DeepSpeed)"),
                         ("torch_autocast", "train.amp")):
        if key in table and enabled(table[key]):
            raise UserError(f"deepspeed.config {path}: {key!r} is not supported here; the trainer's "
                            f"setting for it is {instead}: remove it from the JSON")
