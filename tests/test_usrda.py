"""bsr.methods.usrda / bsr.archs.usrda: USR_DA's networks against module references written from the
documented structure, and its training step's data flow (docs/methods.md)."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bsr import config
from bsr.archs.usrda import Encoder, IdentityDecoder
from bsr.methods import usrda
from resume_check import run_split_and_once

TINY = ["usrda.generator.nf=8", "usrda.generator.nb_id=1", "usrda.generator.nb_sr=1", "usrda.generator.gc=4",
        "usrda.ndf=4", "train.batch_size=2"]


def tiny_method(*overrides):
    cfg = config.load("usrda", "smoke", overrides=TINY + list(overrides))
    return usrda.USRDA(cfg, "cpu")


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"hr": torch.rand(2, 3, 128, 128, generator=gen), "lr": torch.rand(2, 3, 32, 32, generator=gen),
            "seed": torch.tensor([0, 1])}


def test_encoder_and_identity_decoder_keep_the_lr_size_and_the_repos_names():
    enc, dec = Encoder(16), IdentityDecoder(16, 3, 16, 2, 8)
    x = torch.rand(2, 3, 20, 28)
    feat = enc(x)
    assert feat.shape == (2, 16, 20, 28) and dec(feat).shape == (2, 3, 20, 28)
    assert [k for k in enc.state_dict() if k.endswith("weight")] == [f"conv_featmap.{i}.weight" for i in (0, 2, 4, 6, 8)]
    assert {"conv_first.weight", "body.1.rdb3.conv5.weight", "conv_body.weight", "conv_hr.weight",
            "conv_last.weight"} <= set(dec.state_dict())
    assert isinstance(enc.conv_featmap[-1], nn.Conv2d)  # no activation after the last conv


def test_training_step_feeds_the_bicubic_source_lr_and_trains_every_network():
    torch.manual_seed(0)
    method = tiny_method()
    data = batch()
    seen = []
    hook = method.nets["model_Enc"].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    before = {name: copy.deepcopy(net.state_dict()) for name, net in method.nets.items()}
    logs = method.train_step(data, step=0)
    hook.remove()
    x_s = F.interpolate(data["hr"], scale_factor=0.25, mode="bicubic", align_corners=False)  # no antialias
    assert torch.equal(seen[0], data["lr"]) and torch.equal(seen[1], x_s)
    assert set(logs) == {"D", "align", "rec", "res", "sty", "idt", "cyc", "G"}
    assert all(math.isfinite(v) for v in logs.values())
    for name, net in method.nets.items():
        assert any(not torch.equal(before[name][k], v) for k, v in net.state_dict().items()), name
    assert all(p.requires_grad for n in usrda.DISCRIMINATORS for p in method.nets[n].parameters())


@pytest.mark.parametrize("accumulate, expected", [("true", [True, False]), ("false", [True, True])])
def test_inner_generator_updates_accumulate_gradients_as_the_repo_by_default(monkeypatch, accumulate, expected):
    method = tiny_method(f"usrda.accumulate_inner_grads={accumulate}")
    calls = []
    original = method.optimize
    monkeypatch.setattr(method, "optimize", lambda loss, *names, zero_grad=True: (
        calls.append((names, zero_grad)), original(loss, *names, zero_grad=zero_grad))[1])
    method.train_step(batch(), step=0)
    assert calls[0] == (("D",), True)
    assert [zero for names, zero in calls[1:]] == expected and all(names == ("G",) for names, _ in calls[1:])


def test_optimize_without_zero_grad_adds_to_the_previous_gradients():
    method = tiny_method()
    param = next(method.nets["model_Enc"].parameters())
    method.optimizers["G"].param_groups[0]["lr"] = 0.0  # keep the weights: only the gradients matter here
    method.optimize(param.sum(), "G")
    once = param.grad.clone()
    method.optimize(param.sum(), "G", zero_grad=False)
    torch.testing.assert_close(param.grad, 2 * once)
    method.optimize(param.sum(), "G")
    torch.testing.assert_close(param.grad, once)


def test_super_resolve_is_the_sr_decoder_of_the_encoded_lr():
    method = tiny_method()
    lr = torch.rand(1, 3, 12, 16)
    with method.eval_mode():
        sr = method.super_resolve(lr)
        expected = method.nets["model_Dec_SR"](method.nets["model_Enc"](lr))
    assert sr.shape == (1, 3, 48, 64) and torch.equal(sr, expected)


def test_patch_size_must_suit_the_vgg_discriminators():
    with pytest.raises(ValueError, match="multiple of 32 x data.scale"):
        tiny_method("data.hr_patch=96")


def test_resume_is_bit_identical(tmp_path):
    run_split_and_once(tmp_path, "usrda", TINY)


def test_paper_preset_has_the_papers_sizes_over_the_repos_epochs():
    """The repo's option comments record the paper's LR patch 128 and batch 8 (its defaults: 64 and 4); its
    35 000 epochs over the 800 HR images of NTIRE 2020 track 1, drop_last, are 35 000 x 800 // batch iterations."""
    paper, repo = config.load("usrda", "paper"), config.load("usrda", "repo")
    assert (paper.data.hr_patch // paper.data.scale, paper.train.batch_size, paper.train.iters) == (128, 8, 35000 * 100)
    assert (repo.data.hr_patch // repo.data.scale, repo.train.batch_size, repo.train.iters) == (64, 4, 35000 * 200)
    assert paper.train.milestones == repo.train.milestones == [250000, 350000, 450000]
    narrow = TINY[:-1] + ["usrda.loss.percept=0"]  # the paper's crops and batch, narrow networks, no VGG19 file
    method = usrda.USRDA(config.load("usrda", "paper", overrides=narrow), "cpu")
    ndf = method.cfg.usrda.ndf
    for name, size in (("model_Disc_feat", 128), ("model_Disc_img_LR", 128), ("model_Disc_img_HR", 512)):
        assert method.nets[name].classifier[0].in_features == 8 * ndf * (size // 32) ** 2, name


def test_the_ablation_starts_from_the_same_weights_as_the_full_method():
    """usrda.domain_adaptation only changes the training step: for one seed every network starts equal."""
    torch.manual_seed(3)
    full = tiny_method()
    torch.manual_seed(3)
    ablation = tiny_method("usrda.domain_adaptation=false")
    for name in full.nets:
        for key, value in full.nets[name].state_dict().items():
            assert torch.equal(value, ablation.nets[name].state_dict()[key]), (name, key)


def test_the_ablation_trains_enc_and_dec_sr_on_the_source_bicubic_pairs_only(monkeypatch):
    torch.manual_seed(0)
    method = tiny_method("usrda.domain_adaptation=false", "usrda.loss.rec=0.5")
    data = batch()
    x_s = F.interpolate(data["hr"], scale_factor=0.25, mode="bicubic", align_corners=False)
    with torch.no_grad():
        first_loss = 0.5 * F.l1_loss(method.nets["model_Dec_SR"](method.nets["model_Enc"](x_s)), data["hr"])
    seen, calls = [], []
    hook = method.nets["model_Enc"].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    original = method.optimize
    monkeypatch.setattr(method, "optimize", lambda loss, *names, zero_grad=True: (
        calls.append((names, zero_grad, loss.item())), original(loss, *names, zero_grad=zero_grad))[1])
    before = {name: copy.deepcopy(net.state_dict()) for name, net in method.nets.items()}
    logs = method.train_step(data, step=0)
    hook.remove()
    assert len(seen) == 2 and all(torch.equal(x, x_s) for x in seen)  # n_gen = 2 updates, X_t never encoded
    assert [(names, zero) for names, zero, _ in calls] == [(("G",), True), (("G",), False)]  # no D step
    assert calls[0][2] == pytest.approx(first_loss.item(), rel=1e-6)
    assert set(logs) == {"rec", "G"} and float(logs["G"]) == pytest.approx(0.5 * float(logs["rec"]), rel=1e-6)
    changed = {name for name, net in method.nets.items()
               if any(not torch.equal(before[name][k], v) for k, v in net.state_dict().items())}
    assert changed == {"model_Enc", "model_Dec_SR"} and set(method.optimizers) == {"G"}


def test_a_resumed_run_keeps_its_domain_adaptation_setting(tmp_path):
    run_split_and_once(tmp_path, "usrda", TINY + ["usrda.domain_adaptation=false"])
    saved = config.load("usrda", "smoke", overrides=TINY)
    changed = config.load("usrda", "smoke", overrides=TINY + ["usrda.domain_adaptation=false"])
    with pytest.raises(config.ConfigError, match="usrda.domain_adaptation"):
        config.resume_changes(saved, changed)
