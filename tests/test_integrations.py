"""Trainer integrations on a tiny language model on the CPU, with the real packages (pinned in the `trainers`
extra; each test skips with the reason when its package is absent): the refresh runs on the optimizer's refresh
steps only, on the sub-batch, the estimate reaches h, and the win rate reaches the trainer's logs."""

from __future__ import annotations

import pytest
import torch

from sophia_ref import SophiaRef
from sophia_ref.fast import Sophia

VOCAB, STEPS, K = 11, 12, 5  # refreshes at steps 1, 6, 11


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, VOCAB)

    def logits(self, input_ids):
        return self.head(torch.tanh(self.emb(input_ids)))


def _tokens(n=32, seq=6):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (n, seq + 1), generator=g)


def _optimizer(kind, params):
    kwargs = dict(lr=0.01, gamma=0.05, hessian_interval=K)
    return SophiaRef(params, **kwargs) if kind == "ref" else Sophia(params, backend="foreach", **kwargs)


@pytest.mark.parametrize("kind", ["ref", "fast"])
def test_lightning_callback(kind, tmp_path):
    pl = pytest.importorskip("pytorch_lightning", reason="the Lightning callback needs pytorch-lightning "
                                                         "(pip install 'sophia-ref[trainers]')")
    from sophia_ref.integrations.lightning import SophiaCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = TinyLM()
            self.sub_batches = []

        def forward(self, input_ids):
            self.sub_batches.append(input_ids.shape[0])
            return self.lm.logits(input_ids)

        def training_step(self, batch, batch_idx):
            (tokens,) = batch
            logits = self(tokens[:, :-1])
            return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))

        def configure_optimizers(self):
            return _optimizer(kind, self.parameters())

    module = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(_tokens()), batch_size=8)
    callback = SophiaCallback(inputs=lambda batch: batch[0][:, :-1], sub_batch=4,
                              generator=torch.Generator().manual_seed(2))
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[callback])
    trainer.fit(module, data)
    opt = trainer.optimizers[0]
    assert callback.refreshes == 3 and module.sub_batches.count(4) == 3  # three refreshes, each on 4 examples
    assert all(opt.state[p]["refreshes"] == 3 and opt.state[p]["step"] == STEPS for p in module.parameters())
    assert all(bool((opt.state[p]["h"] > 0).any()) for p in module.parameters())
    assert 0.0 <= float(trainer.callback_metrics["sophia/win_rate"]) <= 1.0


def test_lightning_callback_refuses_another_optimizer():
    pl = pytest.importorskip("pytorch_lightning")
    from sophia_ref.integrations.lightning import SophiaCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lm = TinyLM()

        def training_step(self, batch, batch_idx):
            return self.lm.logits(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters())

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(_tokens()), batch_size=8)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[SophiaCallback()])
    with pytest.raises(TypeError, match="needs a sophia_ref optimizer .* got AdamW"):
        trainer.fit(Module(), data)
    with pytest.raises(ValueError, match="sub_batch=0 is not valid"):
        SophiaCallback(sub_batch=0)


@pytest.mark.parametrize("kind", ["ref", "fast"])
def test_huggingface_trainer_callback(kind, tmp_path):
    transformers = pytest.importorskip("transformers", reason="the Trainer callback needs transformers and "
                                                              "accelerate (pip install 'sophia-ref[trainers]')")
    pytest.importorskip("accelerate", reason="the Hugging Face Trainer needs accelerate")
    from sophia_ref.integrations.huggingface import SophiaTrainerCallback

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = TinyLM()
            self.sub_batches = []

        def forward(self, input_ids, labels=None):
            self.sub_batches.append((input_ids.shape[0], labels is None))
            logits = self.lm.logits(input_ids)
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
            return out

    tokens = _tokens()
    dataset = [{"input_ids": t[:-1], "labels": t[1:]} for t in tokens]
    model = Model()
    opt = _optimizer(kind, model.parameters())
    callback = SophiaTrainerCallback(sub_batch=4, generator=torch.Generator().manual_seed(3))
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
                                          logging_steps=4, report_to=[], use_cpu=True, save_strategy="no",
                                          disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset, optimizers=(opt, None),
                                   callbacks=[callback])
    trainer.train()
    assert callback.refreshes == 3 and model.sub_batches.count((4, True)) == 3
    assert all(opt.state[p]["refreshes"] == 3 and opt.state[p]["step"] == STEPS for p in model.parameters())
    rates = [entry["sophia_win_rate"] for entry in trainer.state.log_history if "sophia_win_rate" in entry]
    assert len(rates) >= 3 and all(0.0 <= r <= 1.0 for r in rates)
