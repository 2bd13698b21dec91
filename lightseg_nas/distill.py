"""Knowledge distillation for segmentation students of 1 or 2 classes.

Both networks' outputs are mapped to two-class logits (a single foreground logit z becomes
(0, z), whose softmax is the sigmoid), so any 1- or 2-class teacher teaches any 1- or 2-class
student. Two terms:

* pixel-wise KD (Hinton et al.; Liu et al. 2019, "Structured knowledge distillation for
  semantic segmentation"): KL(teacher || student) of the per-pixel class distributions at
  temperature T, times T^2;
* channel-wise distillation (Shu et al. 2021, "Channel-wise knowledge distillation for dense
  prediction"): each class map becomes a distribution over pixels (spatial softmax at
  temperature T); KL(teacher || student) per class channel, times T^2.

The teacher sees the images with its own preprocessing (a released network its BGR recipe,
a trained one its own), and its logits are resized to the student's when they differ.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from lightseg_nas.data.transforms import denormalize, get_preprocessing, normalize
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import load_model_file, load_record
from lightseg_nas.presets import get_preset, list_presets, load_released_weights
from lightseg_nas.settings import DistillSettings

__all__ = ["two_class_logits", "pixel_kd", "channel_wise_kd", "Distiller", "DistillSettings", "load_teacher"]


def two_class_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return torch.cat([torch.zeros_like(logits), logits], 1)
    if logits.shape[1] == 2:
        return logits
    raise ValueError(f"cannot map {logits.shape[1]} classes to background/foreground")


def pixel_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p_student = F.log_softmax(student / temperature, 1)
    p_teacher = F.softmax(teacher / temperature, 1)
    kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).sum(1)
    return kl.mean() * temperature**2


def channel_wise_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    n, c = student.shape[:2]
    log_p_student = F.log_softmax(student.reshape(n, c, -1) / temperature, 2)
    p_teacher = F.softmax(teacher.reshape(n, c, -1) / temperature, 2)
    kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).sum(2)
    return kl.mean() * temperature**2


class Distiller:
    """``extra_loss`` for ``train.fit``: weight * pixel KD + channel_weight * channel-wise KD.

    The teacher must already sit on the device the student trains on."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        teacher_preprocessing: dict,
        student_preprocessing: dict,
        temperature: float = 2.0,
        weight: float = 1.0,
        channel_weight: float = 1.0,
    ):
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.teacher_preprocessing = teacher_preprocessing
        self.student_preprocessing = student_preprocessing
        self.temperature = temperature
        self.weight = weight
        self.channel_weight = channel_weight

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.teacher_preprocessing != self.student_preprocessing:
            x = normalize(denormalize(x, self.student_preprocessing), self.teacher_preprocessing)
        with torch.no_grad():
            return self.teacher(x)

    def __call__(self, x: torch.Tensor, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        teacher = two_class_logits(self.teacher_logits(x))
        student = two_class_logits(logits)
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
        loss = student.new_zeros(())
        if self.weight:
            loss = loss + self.weight * pixel_kd(student, teacher, self.temperature)
        if self.channel_weight:
            loss = loss + self.channel_weight * channel_wise_kd(student, teacher, self.temperature)
        return loss


def _digest(path: Path) -> str:
    """First 16 hex digits of a file's SHA-256: names a teacher's weights on any machine (its
    path names them on one only)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def load_teacher(spec: str, weights: Optional[Path]) -> tuple[torch.nn.Module, dict, str]:
    """(teacher in eval mode, its preprocessing, a description) from a model file or a preset."""
    if spec in list_presets():
        if weights is None:
            raise FieldError(("teacher", "teacher_weights"), f"{{0}} {spec}: a preset teacher needs {{1}} FILE.pth (the released weights)")
        model = load_released_weights(build_model(get_preset(spec)), spec, weights)
        return model.eval(), get_preprocessing("released"), f"preset {spec} ({Path(weights).name}, sha256 {_digest(weights)})"
    if weights is not None:
        raise FieldError(("teacher_weights", "teacher"), "{0} goes with a preset {1} (a model file holds its own weights)")
    path = Path(spec)
    if not path.is_file():
        raise FieldError("teacher", f"{{0}} {spec}: neither a model file nor a preset ({', '.join(list_presets())})")
    record = load_record(path)
    classes = record["config"].get("num_classes") if isinstance(record["config"], dict) else None
    if classes not in (1, 2):
        raise UserError(
            f"--teacher {spec}: its {classes!r} output classes cannot be mapped to background/foreground "
            "(a teacher has 1 foreground logit or 2 softmax classes)"
        )
    model, record = load_model_file(path)
    return model.eval(), record["preprocessing"], f"model file {path.name} (arch {record['arch_id']}, sha256 {_digest(path)})"
