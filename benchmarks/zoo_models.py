"""The zoo's architectures: torchvision and transformers models with random weights (no
downloads), and their export to ONNX with either of torch's exporters (benchmarks/zoo.py)."""

import pathlib

EXPORTERS = ("torchscript", "dynamo")
SEQ = 128  # the transformers models' sequence length


# name -> () -> (torch module in eval mode, {input name: numpy array})
def _vision(factory: str, **kwargs):
    def build():
        import numpy as np
        import torch
        import torchvision

        torch.manual_seed(0)
        model = getattr(torchvision.models, factory)(weights=None, **kwargs).eval()
        # Zero-initialised weights (ViT's head) would make the output 0 and the check empty.
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1 and not param.any():
                    param.normal_(0.0, 0.02)
        image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return model, {"input": image}

    return build


def _token_inputs(vocab: int, masked: int) -> dict:
    """Random token ids and a padding mask whose last ``masked`` positions are 0."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, vocab, (1, SEQ), dtype=np.int64)
    mask = np.ones((1, SEQ), dtype=np.int64)
    mask[:, SEQ - masked :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _bert():
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=4,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )

    class Encoder(torch.nn.Module):  # one output: the last hidden state
        def __init__(self):
            super().__init__()
            self.bert = BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    return Encoder().eval(), _token_inputs(config.vocab_size, masked=28)


def _gpt2():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=SEQ, use_cache=False)

    class Decoder(torch.nn.Module):  # one output: the logits
        def __init__(self):
            super().__init__()
            self.gpt2 = GPT2LMHeadModel(config)

        def forward(self, input_ids, attention_mask):
            out = self.gpt2(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return out[0]

    return Decoder().eval(), _token_inputs(config.vocab_size, masked=16)


MODELS = {
    "resnet50": _vision("resnet50"),
    "mobilenet_v3_small": _vision("mobilenet_v3_small"),
    "mobilenet_v3_large": _vision("mobilenet_v3_large"),
    "efficientnet_b0": _vision("efficientnet_b0"),
    "squeezenet1_1": _vision("squeezenet1_1"),
    "shufflenet_v2_x1_0": _vision("shufflenet_v2_x1_0"),
    "densenet121": _vision("densenet121"),
    # Its own init (truncated normal, std 0.01) makes the features vanish: the logits would be
    # the fc bias alone. torch's default init keeps them.
    "googlenet": _vision("googlenet", aux_logits=False, init_weights=False),
    "regnet_y_400mf": _vision("regnet_y_400mf"),
    "convnext_tiny": _vision("convnext_tiny"),
    "vit_b_16": _vision("vit_b_16"),
    "swin_t": _vision("swin_t"),
    "bert_4l_256h": _bert,
    "gpt2_4l_256h": _gpt2,
}


def export(name: str, exporter: str, model, inputs: dict, path: pathlib.Path) -> None:
    import torch

    args = tuple(torch.from_numpy(a) for a in inputs.values())
    tmp = path.with_suffix(".tmp.onnx")
    kwargs = {"input_names": list(inputs), "output_names": ["output"]}
    # Not under no_grad: there nn.MultiheadAttention takes its fused fast path, which the
    # TorchScript exporter cannot export (aten::_native_multi_head_attention).
    if exporter == "torchscript":
        torch.onnx.export(model, args, str(tmp), dynamo=False, **kwargs)
    else:  # weights inside the file: onnxruntime_runner reads the model as bytes
        torch.onnx.export(model, args, str(tmp), dynamo=True, external_data=False, **kwargs)
    tmp.replace(path)  # only a complete export is cached
