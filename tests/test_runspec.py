from transferbench.runspec import CheckpointRef, RunSpec, resolve_hparams


def _spec(seed=21, lr=None, path=""):
    ck = CheckpointRef(method="acdc", sparsity=0.9, arch="resnet50", identity="acdc-resnet50-90", path=path)
    overrides = {} if lr is None else {"lr": lr}
    return RunSpec(task="cifar10", mode="linear", seed=seed, checkpoint=ck,
                   hparams=resolve_hparams("linear", 0.001, overrides))


def test_run_key_is_stable_readable_and_sensitive_to_what_changes_numbers():
    key = _spec().run_key
    assert key == _spec().run_key
    assert key.startswith("cifar10.acdc90.resnet50.linear.s21.")
    assert _spec(seed=51).run_key != key
    assert _spec(lr=0.1).run_key != key
    # where the checkpoint file lives does not change the run
    assert _spec(path="/elsewhere/acdc.pth").run_key == key
