"""A small causal language model trained on CPU with attnforge's attention op.

Attention runs with ``backend="reference"``: the f64 reference forward and backward
(variants.md sections 0 and 12) on CPU, slow but exact. The generated backward kernels do not
exist yet (issue 18), so training through ``backend="sim"`` or on a GPU is not possible; on a
CUDA machine, the same script runs once the op launches on PyTorch's stream (docs/python.md,
"What runs where"): move the model and data with ``.to("cuda")`` and drop ``backend``.

    python python/examples/train_causal_lm.py --steps 20
"""

import argparse

import torch

import attnforge.torch as at

LOSSES: list = []


class Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int = 64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.q = torch.nn.Linear(dim, heads * head_dim)
        self.kv = torch.nn.Linear(dim, 2 * kv_heads * head_dim)
        self.o = torch.nn.Linear(heads * head_dim, dim)
        self.attn = at.Attention(mask="causal", backend="reference")  # GQA when heads > kv_heads
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, s, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = self.attn(q.contiguous(), k.contiguous(), v.contiguous())
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        return x + self.mlp(self.norm2(x))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int, dim: int = 64, layers: int = 2):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.blocks = torch.nn.ModuleList(Block(dim, heads=2, kv_heads=1) for _ in range(layers))
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens):
        x = self.emb(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    torch.manual_seed(0)
    text = "attention is all you need; attention with masks is what attnforge generates. " * 4
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    seq = 48
    model = TinyLM(len(vocab))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    LOSSES.clear()
    for step in range(a.steps):
        starts = torch.randint(0, len(ids) - seq - 1, (4,))
        x = torch.stack([ids[s : s + seq] for s in starts])
        y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        LOSSES.append(loss.item())
        print(f"step {step:3d}  loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
