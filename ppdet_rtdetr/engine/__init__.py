"""Training for RT-DETR: ``RTDETRTrainer``, a subclass of ppdet's Trainer that our tools construct.

Importing this package changes nothing in ppdet. ``trainer`` holds the subclass; ``pretrain`` (fine-tuning
weights with one report), ``checkpoint`` (atomic checkpoints, resume from a folder, the one weights reader)
and ``loss_guard`` (non-finite losses, the AMP step skip) hold what it does.
"""
from .trainer import RTDETRTrainer

__all__ = ['RTDETRTrainer']
