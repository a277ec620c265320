"""Two models, two optimizers stepping in lock-step (a GAN-shaped loop); the generator's LR schedule breaks."""

import torch
from torch import nn

BREAK_AT = 4
EXPECT = {
    "kind": "invalid_hyperparameter",
    "where": "hyperparameters",
    "phase": "schedule",
    "step": BREAK_AT,
    "hyperparameter": "lr",
    "names": ["optimizer[1].param_groups[0].lr"],
}


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))

    def forward(self, z):
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


def setup():
    torch.manual_seed(0)
    gen, disc = Generator(), Discriminator()
    opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, lambda it: float("inf") if it >= BREAK_AT else 1.0)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(64, 8, generator=g) * 0.5 + 1.0
    bce = nn.BCEWithLogitsLoss()

    def train():
        for _ in range(3):
            for i in range(0, 64, 16):
                z = torch.randn(16, 4, generator=g)
                fake = gen(z)
                d_loss = bce(disc(real[i : i + 16]), torch.ones(16, 1)) + bce(
                    disc(fake.detach()), torch.zeros(16, 1)
                )
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                g_loss = bce(disc(fake), torch.ones(16, 1))
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                sched_g.step()

    return {"gen": gen, "disc": disc}, [opt_d, opt_g], train


if __name__ == "__main__":
    setup()[2]()
