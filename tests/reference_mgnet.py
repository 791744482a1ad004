"""An independent, literal transcription of the authors' MGNet forward pass (from reference/mgnet.md).

Used only by the parity tests. It works on ImageNet-normalised inputs and the authors' state_dict
(keys prefixed ``model.``), recomputes full self-attention over all tokens at every step, samples
every glimpse with grid_sample (the first one too) and re-scales gradients with a detach trick,
so it shares no code path with mgnet.model.
"""

import math

import torch
import torch.nn.functional as F
import torchvision


def _linear(sd, name, x):
    return F.linear(x, sd[f"model.{name}.weight"], sd[f"model.{name}.bias"])


class ReferenceMGNet:
    def __init__(self, state_dict, backbone="resnet18", n_iter=4, scale=2.33, scale_min=0.2, scale_max=0.5, s=0.02):
        self.sd = state_dict
        self.n_iter, self.scale, self.smin, self.smax, self.s = n_iter, scale, scale_min, scale_max, s
        self.backbone = getattr(torchvision.models, backbone)(weights=None)
        self.backbone.fc = torch.nn.Identity()
        self.backbone.load_state_dict(
            {k[len("model.backbone.") :]: v for k, v in state_dict.items() if k.startswith("model.backbone.")}
        )
        self.backbone.eval()
        dim = state_dict["model.feat_fusion.norm.weight"].shape[0]
        self.mha = torch.nn.MultiheadAttention(dim, 1)
        self.mha.load_state_dict(
            {
                k[len("model.feat_fusion.mha.") :]: v
                for k, v in state_dict.items()
                if k.startswith("model.feat_fusion.mha.")
            }
        )
        self.mha.eval()

    def __call__(self, x_norm):
        B, _, H, _ = x_norm.shape
        h = int(math.floor(H / self.scale + 1e-9))
        a = torch.tensor([1.0, 0.0, 0.0], dtype=x_norm.dtype).repeat(B, 1)
        tokens, outs, params = [], [], []
        for _ in range(self.n_iter):
            theta = torch.zeros(B, 2, 3, dtype=x_norm.dtype)
            theta[:, 0, 0] = a[:, 0]
            theta[:, 1, 1] = a[:, 0]
            theta[:, 0, 2] = a[:, 1]
            theta[:, 1, 2] = a[:, 2]
            grid = F.affine_grid(theta, (B, 3, h, h), align_corners=True)
            g = F.grid_sample(x_norm, grid, align_corners=True)
            f = self.backbone(g)
            tokens.append(torch.cat([f, a.detach()], 1))
            seq = torch.stack(tokens)  # [t, B, D+3]
            att, _ = self.mha(seq, seq, seq)
            z = F.relu(
                F.layer_norm(
                    att,
                    (seq.shape[-1],),
                    self.sd["model.feat_fusion.norm.weight"],
                    self.sd["model.feat_fusion.norm.bias"],
                )[-1]
            )
            outs.append(_linear(self.sd, "global_fc.fc", z))
            params.append(a)
            u = torch.sigmoid(_linear(self.sd, "loc_network.fc", z))
            u = u.detach() * (1 - self.s) + u * self.s  # forward: u; backward: x s
            sc = u[:, 0] * (self.smax - self.smin) + self.smin
            a = torch.stack([sc, 2 * (u[:, 1] - 0.5) * (1 - sc), 2 * (u[:, 2] - 0.5) * (1 - sc)], 1)
        return torch.stack(outs), torch.stack(params)
