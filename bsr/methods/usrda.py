"""USR_DA: "Unsupervised Real-World Super Resolution: A Domain Adaptation Perspective" (Wang et al., ICCV 2021),
as the unofficial anse3832/USR_DA implements it (no official code exists; docs/methods.md).

Unpaired data: X_t real target-domain LR crops (data.lr), Y_s clean HR crops (data.hr), X_s = PyTorch
bicubic (no antialias) x1/s of Y_s. Networks (the repo's names, so its generator weights load):
model_Enc (image -> 64-ch LR-sized feature), model_Dec_Id (feature -> target-style LR), model_Dec_SR
(feature -> HR, RRDBNet), and three VGG-style discriminators: model_Disc_feat on features,
model_Disc_img_LR on LR images, model_Disc_img_HR on HR images (built on bsrops.nn.PatchGANConv).
F_t = Enc(X_t), F_s = Enc(X_s), Y_ss = Dec_SR(F_s), X_tt = Dec_Id(F_t), X_st = Dec_Id(F_s),
F~_s = Enc(X_st), Y_sts = Dec_SR(F~_s). All adversarial terms are LSGAN on per-image logits.
- D step (n_disc = 1), generator outputs detached: 1/2 [D_feat(F_t) -> 0, D_feat(F_s) -> 1]
  + 1/2 [D_HR(Y_ss) -> 0, D_HR(Y_s) -> 1] + 1/2 [D_LR(X_st) -> 0, D_LR(X_t) -> 1] + 1/2 [D_HR(Y_sts) -> 0, D_HR(Y_s) -> 1].
- G step, n_gen = 2 inner updates of Enc + Dec_Id + Dec_SR (one Adam, amsgrad):
  0.01 L_align (D_feat(F_t), D_feat(F_s) -> 0.5) + L_rec (L1 + 0.01 VGG + 0.01 adv of Y_ss)
  + L_res (L1(X_tt, X_t)) + 0.01 L_sty (D_LR(X_st) -> 1) + 0.01 L_idt (L1(F_s, F~_s)) + L_cyc (as L_rec for Y_sts).
  The repo zeroes the gradients once before the two inner updates, so the second one steps on the
  sum of both passes' gradients; `usrda.accumulate_inner_grads: true` keeps that (docs/fidelity.md),
  false zeroes them before each update.
`usrda.domain_adaptation: false` is an ablation (not the method): the same networks, built from the same
seed, but no discriminator optimiser or step and a generator loss of L_rec without its adversarial term on the source
bicubic pairs only (X_s -> Y_ss: L1 + percept x VGG), with the same n_gen inner updates; X_t is unused.
Adam lr 1e-4, betas (0.9, 0.99), amsgrad, halved at 250k/350k/450k iterations; the repo's LR patch 64, HR 256,
batch 4 (`repo` preset), or the paper's LR patch 128, batch 8 that the repo's comments record (`paper`).
Perceptual loss: VGG19 conv5_4 (before ReLU), L1, *no* ImageNet input normalisation (as the repo).

Deviations: the repo's D step also builds the generator graphs (it does not use no_grad) and evaluates
D_HR(Y_s) twice; here the generators run without gradients there and D_HR(Y_s) once (same values and
updates). The crops' augmentation and LR image choice are the engine's (8-way dihedral, uniform), not
the repo's flip + "RandRotate" (75% rotated by 90 degrees) and its index formula.
"""
import torch
import torch.nn.functional as F

from ..archs.rrdb import RRDBNet
from ..archs.discriminators import VGGDiscriminator
from ..archs.usrda import Encoder, IdentityDecoder
from ..losses import GANLoss, PerceptualLoss
from . import register
from .base import Method

GENERATORS = ("model_Enc", "model_Dec_Id", "model_Dec_SR")
DISCRIMINATORS = ("model_Disc_feat", "model_Disc_img_LR", "model_Disc_img_HR")


@register("usrda")
class USRDA(Method):
    data_kind = "unpaired"
    inference_nets = ("model_Enc", "model_Dec_SR")
    scales = (2, 4)  # RRDBNet's

    def __init__(self, cfg, device, for_training=True):
        super().__init__(cfg, device, for_training)
        u, scale, patch = cfg.usrda, cfg.data.scale, cfg.data.hr_patch
        if patch % (32 * scale):
            raise ValueError(f"usrda: data.hr_patch ({patch}) must be a multiple of 32 x data.scale ({32 * scale}): "
                             "the VGG discriminators reduce the LR side by 32")
        g = u.generator
        nets = {"model_Enc": Encoder(g.nf),
                "model_Dec_Id": IdentityDecoder(g.nf, 3, g.nf, g.nb_id, g.gc),
                "model_Dec_SR": RRDBNet(g.nf, 3, g.nf, g.nb_sr, g.gc, upscale=scale),
                "model_Disc_feat": VGGDiscriminator(g.nf, patch // scale, u.ndf),
                "model_Disc_img_LR": VGGDiscriminator(3, patch // scale, u.ndf),
                "model_Disc_img_HR": VGGDiscriminator(3, patch, u.ndf)}
        self.nets = {name: net.to(self.device) for name, net in nets.items()}
        self.add_adam("G", [p for n in GENERATORS for p in self.nets[n].parameters()], cfg.train.lr)
        if u.get("domain_adaptation", True):  # the ablation builds the discriminators (same seeds) but never trains them
            self.add_adam("D", [p for n in DISCRIMINATORS for p in self.nets[n].parameters()],
                          cfg.train.get("lr_d") or cfg.train.lr)
        self.weights = dict(u.loss)
        self.lsgan = GANLoss("lsgan")
        if self.weights.get("percept") and for_training:
            self.perceptual = PerceptualLoss({"conv5_4": 1.0}, weights=u.get("vgg_weights") or True,
                                             use_input_norm=False).to(self.device)

    def forward_all(self, x_t, x_s):
        """F_t, F_s, Y_ss, X_tt, X_st, F~_s, Y_sts (the repo's names without underscores)."""
        enc, dec_id, dec_sr = (self.nets[n] for n in GENERATORS)
        f_t, f_s = enc(x_t), enc(x_s)
        x_st = dec_id(f_s)
        f_s_tilde = enc(x_st)
        return {"F_t": f_t, "F_s": f_s, "Y_ss": dec_sr(f_s), "X_tt": dec_id(f_t), "X_st": x_st,
                "F_s_tilde": f_s_tilde, "Y_sts": dec_sr(f_s_tilde)}

    # ------------------------------------------------------------------ training
    def train_step(self, batch, step):
        y_s, x_t = batch["hr"].to(self.device), batch["lr"].to(self.device)
        x_s = F.interpolate(y_s, scale_factor=1 / self.cfg.data.scale, mode="bicubic", align_corners=False)
        adapt = self.cfg.usrda.get("domain_adaptation", True)
        logs = {"D": self.discriminator_step(x_t, x_s, y_s)} if adapt else {}
        accumulate = self.cfg.usrda.get("accumulate_inner_grads", True)
        for inner in range(int(self.cfg.usrda.n_gen)):
            terms = self.generator_terms(x_t, x_s, y_s) if adapt else self.source_terms(x_s, y_s)
            loss = sum(self.weights[name] * value for name, value in terms.items())
            self.optimize(loss, "G", zero_grad=inner == 0 or not accumulate)
        logs.update({name: value.detach() for name, value in terms.items()}, G=loss.detach())
        return logs

    def discriminator_step(self, x_t, x_s, y_s):
        with torch.no_grad():
            out = self.forward_all(x_t, x_s)
        d_feat, d_lr, d_hr = (self.nets[n] for n in DISCRIMINATORS)

        def pair(d_fake, d_real):
            return (self.lsgan(d_fake, False, is_disc=True) + self.lsgan(d_real, True, is_disc=True)) / 2

        real_hr = d_hr(y_s)
        loss = (pair(d_feat(out["F_t"]), d_feat(out["F_s"])) + pair(d_hr(out["Y_ss"]), real_hr)
                + pair(d_lr(out["X_st"]), d_lr(x_t)) + pair(d_hr(out["Y_sts"]), real_hr))
        self.optimize(loss, "D")
        return loss.detach()

    def generator_terms(self, x_t, x_s, y_s):
        """The six unweighted terms of the generator loss (the discriminators frozen)."""
        out = self.forward_all(x_t, x_s)
        with self.frozen("model_Disc_feat") as d_feat, self.frozen("model_Disc_img_LR") as d_lr, \
                self.frozen("model_Disc_img_HR") as d_hr:
            return {"align": self.lsgan(d_feat(out["F_t"]), 0.5) + self.lsgan(d_feat(out["F_s"]), 0.5),
                    "rec": self.reconstruction(out["Y_ss"], y_s, d_hr),
                    "res": F.l1_loss(out["X_tt"], x_t),
                    "sty": self.lsgan(d_lr(out["X_st"]), True),
                    "idt": F.l1_loss(out["F_s"], out["F_s_tilde"]),
                    "cyc": self.reconstruction(out["Y_sts"], y_s, d_hr)}

    def source_terms(self, x_s, y_s):
        """The ablation's only term (usrda.domain_adaptation false): L_rec of Y_ss = Dec_SR(Enc(X_s)) without
        the adversarial part."""
        y_ss = self.nets["model_Dec_SR"](self.nets["model_Enc"](x_s))
        return {"rec": self.reconstruction(y_ss, y_s)}

    def reconstruction(self, sr, hr, d_hr=None):
        """L1 + percept x VGG + adv x LSGAN(D_HR(sr) -> 1) (L_rec and L_cyc); without d_hr no adversarial part."""
        loss = F.l1_loss(sr, hr)
        if d_hr is not None:
            loss = loss + self.weights["adv"] * self.lsgan(d_hr(sr), True)
        if self.weights.get("percept"):
            loss = loss + self.weights["percept"] * self.perceptual(sr, hr)
        return loss

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def super_resolve(self, lr, kernel=None, noise_level=None):
        return self.nets["model_Dec_SR"](self.nets["model_Enc"](lr))
