"""Test helper: a module shaped like MergeVQ around its teacher: a head (saved) and a teacher (never saved)."""

from torch import nn

from mergevq.tokenizer.alignment import ClsHead, Teacher


class Parent(nn.Module):
    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.head = ClsHead(in_dim=8, out_dim=teacher.dim)
        self.teacher = teacher
