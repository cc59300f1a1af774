"""Write tiny wav2vec 2.0 / HuBERT checkpoints with fairseq's own models and save paths, on CPU.

Usage: fairseq_official.py SRC OUT, with SRC a copy of facebookresearch/fairseq (``git archive``),
run by a Python that has omegaconf<2.1 (fairseq's pin; 2.0.6 was used), sacrebleu, bitarray and
torch. Writes into OUT, for each case of ``gen_fairseq.CASES`` (the same model options):

* ``<case>.pt``: the checkpoint as fairseq saves it: ``args`` (the pre-Hydra ``save_state`` of
  a48f2356, the last before 3b27ed79), ``dictcfg`` (``save_state`` of f6d60e2f^, which pickles the
  omegaconf ``DictConfig``) or ``cfg`` (today's ``Trainer.save_checkpoint`` / ``state_dict``); the
  two old ``save_state`` functions are read from ``SRC/old/*.py`` (``git show <commit>:
  fairseq/checkpoint_utils.py``) with the file writers they call (``torch_persistent_save``,
  ``_torch_persistent_save``) and exec'd in today's ``checkpoint_utils`` namespace;
* ``<case>.ref.pt``: ``{"x": waveforms, "y": the model's extract_features output}`` (eval mode,
  ``mask=False``), what e2mc's transformers model must reproduce from ``<case>.pt``;
* ``wav2vec2_large_cfg_ctc.pt`` / ``.ref.pt``: fairseq's ``Wav2VecCtc`` fine-tuning built on
  ``wav2vec2_large_cfg.pt`` (``Wav2VecEncoder`` loads it), its encoder's output.

Then: ``python gen_fairseq.py GEN`` and, per file, ``compare.py OUT/<case>.pt GEN/<case>.pt`` (with
this venv's Python) and ``fairseq_outputs.py OUT GEN`` (with e2mc's).

Python 3.11 refuses fairseq's dataclass defaults that are dataclass instances (and hydra 1.0's):
``_get_field`` is wrapped to make such a default's class hashable first (nothing else changes).
"""

import dataclasses
import sys
from argparse import Namespace
from pathlib import Path

_orig_get_field = dataclasses._get_field


def _get_field(cls, name, type_, *rest):
    default = cls.__dict__.get(name)
    default = default.default if isinstance(default, dataclasses.Field) else default
    if dataclasses.is_dataclass(default) and type(default).__hash__ is None:
        type(default).__hash__ = object.__hash__
    return _orig_get_field(cls, name, type_, *rest)


dataclasses._get_field = _get_field

SRC, OUT = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
from fairseq import checkpoint_utils  # noqa: E402
from fairseq.data import Dictionary  # noqa: E402
from fairseq.dataclass.configs import FairseqConfig  # noqa: E402
from fairseq.logging import metrics  # noqa: E402
from fairseq.models.hubert.hubert import HubertConfig, HubertModel  # noqa: E402
from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model  # noqa: E402
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig  # noqa: E402
from fairseq.optim.lr_scheduler.polynomial_decay_schedule import (  # noqa: E402
    PolynomialDecayLRSchedule,
    PolynomialDecayLRScheduleConfig,
)
from fairseq.trainer import Trainer  # noqa: E402
from gen_fairseq import CASES, LABELS, N_UPDATES, extra_state, task_options  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def old_save_state(name):
    """``save_state`` and the file writers it calls, from an old ``checkpoint_utils`` (SRC/old/NAME.py),
    exec'd in today's ``checkpoint_utils`` namespace."""
    ns = dict(vars(checkpoint_utils))
    ns["FairseqConfig"] = FairseqConfig  # an annotation of the old signature
    text = (SRC / "old" / f"{name}.py").read_text()
    for fn in ("save_state", "torch_persistent_save", "_torch_persistent_save"):
        if f"\ndef {fn}(" not in text:
            continue
        body = text[text.index(f"\ndef {fn}(") + 1 :]
        body = body[: body.index("\ndef ", 10)]
        exec(compile(body, f"{name}:{fn}", "exec"), ns)
    return ns["save_state"]


class Criterion(torch.nn.Module):  # a parameter-free criterion (fairseq's wav2vec / hubert criteria are)
    pass


Criterion.__name__ = "Wav2vecCriterion"


def build(case):
    family, form, opts = CASES[case]
    torch.manual_seed(0)
    task = task_options(family, opts)
    if family == "wav2vec2":
        model = Wav2Vec2Model(Wav2Vec2Config(**opts))
    else:
        dicts = []
        for n in LABELS:
            d = Dictionary()
            for i in range(n - len(d)):
                d.add_symbol(str(i))
            dicts.append(d)
        task_cfg = Namespace(label_rate=50.0, sample_rate=16000)
        model = HubertModel(HubertConfig(**opts), task_cfg, dicts)
    params = list(model.parameters())
    opt = FairseqAdam(OmegaConf.create(dict(dataclasses.asdict(FairseqAdamConfig(lr=[5e-4], tpu=False)))), params)
    sched_cfg = dataclasses.asdict(PolynomialDecayLRScheduleConfig(lr=[5e-4], total_num_update=100))
    sched = PolynomialDecayLRSchedule(OmegaConf.create(sched_cfg), opt)
    for _ in range(N_UPDATES):  # populate Adam's state
        opt.zero_grad()
        sum((p.float() ** 2).sum() for p in params).backward()
        opt.step()
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 1600)
    with torch.no_grad():
        y = model.extract_features(x, padding_mask=None, mask=False)
    y = y["x"] if isinstance(y, dict) else y[0]
    torch.save({"x": x, "y": y}, OUT / f"{case}.ref.pt")
    return family, form, opts, task, model, opt, sched


def save(case):
    family, form, opts, task, model, opt, sched = build(case)
    crit = Criterion()
    crit.__class__.__name__ = "HubertCriterion" if family == "hubert" else "Wav2vecCriterion"
    path = str(OUT / f"{case}.pt")
    extra = extra_state(form)
    extra["metrics"] = metrics.state_dict()
    if form == "args":
        args = Namespace(**{k: v for k, v in task.items() if k != "_name"}, task=task["_name"])
        args = Namespace(**vars(args), **opts, arch=family, no_save_optimizer_state=False)
        old_save_state("prehydra")(path, args, model.state_dict(), crit, opt, sched, N_UPDATES, extra_state=extra)
        return
    cfg = OmegaConf.create(
        {
            "common": {"fp16": False, "seed": 1},
            "checkpoint": {"no_save_optimizer_state": False, "write_checkpoints_asynchronously": False},
            "ema": {"store_ema": False},
            "task": task,
            "model": {"_name": family, **opts},
            "criterion": {"_name": "hubert" if family == "hubert" else "wav2vec"},
            "optimizer": {"_name": "adam"},
            "lr_scheduler": {"_name": "polynomial_decay"},
        }
    )
    OmegaConf.set_struct(cfg, True)
    task_obj = Namespace(state_dict=lambda: {})
    if form == "dictcfg":
        save_state = old_save_state("dictcfg")
        save_state(path, cfg, model.state_dict(), crit, opt, sched, N_UPDATES, extra_state=extra, task=task_obj)
        return
    fake = Namespace(
        cfg=cfg,
        model=model,
        criterion=crit,
        _optim_history=None,
        get_criterion=lambda: crit,
        optimizer=opt,
        lr_scheduler=sched,
        get_num_updates=lambda: N_UPDATES,
        task=task_obj,
        cumulative_training_time=lambda: extra["previous_training_time"],
        is_fsdp=False,
        _gathered_optim_state=None,
        should_save_checkpoint_on_current_rank=True,
    )
    fake.state_dict = lambda: Trainer.state_dict(fake)
    Trainer.save_checkpoint(fake, path, {k: extra[k] for k in ("train_iterator", "val_loss")})


def save_ctc(case):
    """fairseq's ``Wav2VecCtc`` fine-tuning of ``<case>.pt`` (its weights loaded from there by
    ``Wav2VecEncoder``, pre-training modules removed), saved by ``Trainer.save_checkpoint``."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

    family, _, opts = CASES[case]
    task = task_options(family, opts)
    fields = dataclasses.asdict(Wav2Vec2CtcConfig(w2v_path=str(OUT / f"{case}.pt")))
    fields.update(_name="wav2vec_ctc", normalize=task["normalize"], data=task["data"], ddp_backend="c10d")
    model_cfg = OmegaConf.create(fields)
    target = Dictionary()
    target.add_symbol("a")
    torch.manual_seed(0)
    model = Wav2VecCtc.build_model(model_cfg, Namespace(target_dictionary=target)).eval()
    params = list(model.parameters())
    opt = FairseqAdam(OmegaConf.create(dict(dataclasses.asdict(FairseqAdamConfig(lr=[5e-4], tpu=False)))), params)
    sched_cfg = dataclasses.asdict(PolynomialDecayLRScheduleConfig(lr=[5e-4], total_num_update=100))
    sched = PolynomialDecayLRSchedule(OmegaConf.create(sched_cfg), opt)
    for _ in range(N_UPDATES):
        opt.zero_grad()
        sum((p.float() ** 2).sum() for p in params).backward()
        opt.step()
    ref = torch.load(OUT / f"{case}.ref.pt")
    with torch.no_grad():
        y = model.w2v_encoder.w2v_model.extract_features(ref["x"], padding_mask=None, mask=False)["x"]
    torch.save({"x": ref["x"], "y": y}, OUT / f"{case}_ctc.ref.pt")
    cfg = OmegaConf.create(
        {
            "common": {"fp16": False, "seed": 1},
            "checkpoint": {"no_save_optimizer_state": False, "write_checkpoints_asynchronously": False},
            "ema": {"store_ema": False},
            "task": {"_name": "audio_finetuning", "data": task["data"], "normalize": task["normalize"]},
            "model": model_cfg,
            "criterion": {"_name": "ctc"},
            "optimizer": {"_name": "adam"},
            "lr_scheduler": {"_name": "polynomial_decay"},
        }
    )
    crit = Criterion()
    crit.__class__.__name__ = "CtcCriterion"
    extra = extra_state("cfg")
    fake = Namespace(
        cfg=cfg,
        model=model,
        criterion=crit,
        _optim_history=None,
        get_criterion=lambda: crit,
        optimizer=opt,
        lr_scheduler=sched,
        get_num_updates=lambda: N_UPDATES,
        task=Namespace(state_dict=lambda: {}),
        cumulative_training_time=lambda: extra["previous_training_time"],
        is_fsdp=False,
        _gathered_optim_state=None,
        should_save_checkpoint_on_current_rank=True,
    )
    fake.state_dict = lambda: Trainer.state_dict(fake)
    Trainer.save_checkpoint(fake, str(OUT / f"{case}_ctc.pt"), {k: extra[k] for k in ("train_iterator", "val_loss")})


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        save(case)
        print("wrote", case)
    save_ctc("wav2vec2_large_cfg")
    print("wrote wav2vec2_large_cfg_ctc")
