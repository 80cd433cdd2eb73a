"""Real entries built at full size on the meta device vs. the public checkpoints.

Each signature records what the public checkpoint holds: total parameters (as the model card
states, to ~1 %), the number of tensors in the file, and shapes that pin the card's
construction choices (patch size, register tokens, SwiGLU widths, layer scale, projections).
Sources: the model cards and config.json files cited in mmpath/models/encoders/pathology.py.
For transformers models the tensor count is the current transformers module's (old
checkpoints use other names, which from_pretrained converts), so only stable names are listed.
"""

from __future__ import annotations

import pytest
import torch

import mmpath.models as M

SIGNATURES = {
    # MahmoodLab/UNI: ViT-L/16, 303M; 24 blocks x 14 tensors (+ layer scale) + 6
    "uni": (
        303.35e6,
        342,
        {
            "pos_embed": (1, 197, 1024),
            "blocks.0.ls1.gamma": (1024,),
            "blocks.23.mlp.fc1.weight": (4096, 1024),
            "patch_embed.proj.weight": (1024, 3, 16, 16),
        },
    ),
    # MahmoodLab/UNI2-h: ViT-H/14, 681M, 8 registers, no class pos-embed, SwiGLU 8192
    "uni2": (
        681.4e6,
        343,
        {
            "pos_embed": (1, 256, 1536),
            "reg_token": (1, 8, 1536),
            "blocks.0.mlp.fc1.weight": (8192, 1536),
            "blocks.0.mlp.fc2.weight": (1536, 4096),
            "patch_embed.proj.weight": (1536, 3, 14, 14),
        },
    ),
    # paige-ai/Virchow2: ViT-H/14, 632M, 4 registers, SwiGLU mlp_ratio 5.3375 (6832 / 3416)
    "virchow2": (
        631.2e6,
        455,
        {
            "pos_embed": (1, 261, 1280),
            "reg_token": (1, 4, 1280),
            "blocks.31.mlp.fc1.weight": (6832, 1280),
            "blocks.0.mlp.fc2.weight": (1280, 3416),
        },
    ),
    # paige-ai/Virchow: ViT-H/14, 632M (model card), as Virchow2 without the 4 registers
    "virchow": (
        631.2e6,
        454,
        {
            "pos_embed": (1, 257, 1280),
            "blocks.31.mlp.fc1.weight": (6832, 1280),
            "blocks.0.mlp.fc2.weight": (1280, 3416),
            "patch_embed.proj.weight": (1280, 3, 14, 14),
        },
    ),
    # bioptimus/H-optimus-0: ViT-g/14 with 4 registers, 1.1B
    "h-optimus-0": (
        1134.8e6,
        567,
        {
            "pos_embed": (1, 256, 1536),
            "reg_token": (1, 4, 1536),
            "blocks.39.mlp.fc1.weight": (8192, 1536),
            "patch_embed.proj.weight": (1536, 3, 14, 14),
        },
    ),
    # prov-gigapath/prov-gigapath tile encoder: ViT-g with patch 16 (config.json), 1.13B
    "prov-gigapath": (
        1135.0e6,
        566,
        {
            "pos_embed": (1, 197, 1536),
            "blocks.39.mlp.fc1.weight": (8192, 1536),
            "patch_embed.proj.weight": (1536, 3, 16, 16),
        },
    ),
    # owkin/phikon: ViT-B/16 (86M) without pooler
    "phikon": (
        85.8e6,
        None,
        {
            "embeddings.position_embeddings": (1, 197, 768),
            "embeddings.cls_token": (1, 1, 768),
            "embeddings.patch_embeddings.projection.weight": (768, 3, 16, 16),
        },
    ),
    # owkin/phikon-v2: DINOv2 ViT-L/16 (0.3B)
    "phikon-v2": (
        303.4e6,
        None,
        {
            "embeddings.position_embeddings": (1, 197, 1024),
            "embeddings.patch_embeddings.projection.weight": (1024, 3, 16, 16),
        },
    ),
    # vinid/plip = openai/clip-vit-base-patch32 shapes: 151,277,313 parameters
    "plip": (
        151.277313e6,
        None,
        {
            "visual_projection.weight": (512, 768),
            "text_projection.weight": (512, 512),
            "vision_model.embeddings.position_embedding.weight": (50, 768),
            "text_model.embeddings.token_embedding.weight": (49408, 512),
            "logit_scale": (),
        },
    ),
    # wisdomik/QuiltNet-B-32: open_clip ViT-B-32 (same 151,277,313 parameters)
    "quiltnet": (
        151.277313e6,
        302,
        {
            "visual.proj": (768, 512),
            "text_projection": (512, 512),
            "visual.positional_embedding": (50, 768),
            "token_embedding.weight": (49408, 512),
        },
    ),
    # MahmoodLab/CONCH: CoCa ViT-B/16 at 448 px, 512-d (conch_ViT-B-16.json)
    "conch": (
        395.2e6,
        641,
        {
            "visual.trunk.pos_embed": (1, 785, 768),
            "text.token_embedding.weight": (32007, 768),
        },
    ),
    # sentence-transformers/all-MiniLM-L6-v2 (22.7M incl. the unused pooler)
    "minilm": (
        22.57e6,
        101,
        {
            "embeddings.word_embeddings.weight": (30522, 384),
            "embeddings.position_embeddings.weight": (512, 384),
        },
    ),
    # --- issue 16 additions: values from the public construction code (see
    # mmpath/models/encoders/pathology_more.py); not checked against the weight files.
    # bioptimus/H-optimus-1: H-optimus-0's architecture (card), 1.1B
    "h-optimus-1": (
        1134.8e6,
        567,
        {
            "pos_embed": (1, 256, 1536),
            "reg_token": (1, 4, 1536),
            "blocks.39.mlp.fc1.weight": (8192, 1536),
        },
    ),
    # bioptimus/H0-mini: ViT-B/14, 4 registers (261 tokens at 224 px), SwiGLU; 86M (card)
    "h0-mini": (
        85.74e6,
        175,
        {
            "pos_embed": (1, 256, 768),
            "reg_token": (1, 4, 768),
            "blocks.11.mlp.fc1.weight": (4096, 768),
            "blocks.11.mlp.fc2.weight": (768, 2048),
            "patch_embed.proj.weight": (768, 3, 14, 14),
        },
    ),
    # majiabo/GPFM: DINOv2 ViT-L/14 at 224 px (Trident loads GPFM.pth strictly into it)
    "gpfm": (
        303.23e6,
        342,
        {
            "pos_embed": (1, 257, 1024),
            "blocks.23.ls2.gamma": (1024,),
            "patch_embed.proj.weight": (1024, 3, 14, 14),
        },
    ),
    # kaiko-ai/midnight: transformers Dinov2Model ViT-g/14, fused SwiGLU (4096 hidden)
    "midnight": (
        1136.48e6,
        None,
        {
            "embeddings.position_embeddings": (1, 1370, 1536),
            "encoder.layer.39.mlp.gate_proj.weight": (4096, 1536),
            "encoder.layer.39.mlp.down_proj.weight": (1536, 4096),
        },
    ),
    # MahmoodLab/conchv1_5 pytorch_model_vision.bin: ViT-L/16 trunk + attentional pooler
    "conch_v15": (
        306.11e6,
        352,
        {
            "trunk.pos_embed": (1, 197, 1024),
            "trunk.blocks.0.ls1.gamma": (1024,),
            "attn_pool_contrast.query": (1, 768),
            "attn_pool_contrast.to_kv.weight": (1536, 1024),
            "attn_pool_contrast.to_out.weight": (768, 768),
            "ln_contrast.weight": (768,),
        },
    ),
    # OmiCLIP (Loki): open_clip coca_ViT-L-14
    "omiclip": (
        638.45e6,
        773,
        {
            "visual.proj": (768, 768),
            "visual.attn_pool.attn.k_proj_weight": (768, 1024),
            "text.text_projection": (768, 768),
            "text.cls_emb": (768,),
            "text_decoder.text_projection": (768, 49408),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_full_size_build_matches_public_checkpoint(name):
    if not M.list_encoders(name)["available"].iloc[0]:
        pytest.skip(f"{name} needs an optional package")
    enc = M.create_encoder(name, device="meta")
    assert next(enc.parameters()).device.type == "meta"
    params, n_tensors, shapes = SIGNATURES[name]
    state = enc.model.state_dict()
    total = sum(p.numel() for p in enc.model.parameters())
    assert abs(total - params) / params < 0.005, total
    if n_tensors is not None:
        assert len(state) == n_tensors
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert enc.info.verified is (name == "minilm")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_full_size_contract_on_meta(name):
    """The contract at full size (shapes only: meta tensors carry no data)."""
    if not M.list_encoders(name)["available"].iloc[0]:
        pytest.skip(f"{name} needs an optional package")
    enc = M.create_encoder(name, device="meta")
    info = enc.info
    if info.has_image:
        size = info.data.input_size
        x = torch.empty(1, 3, size, size, device="meta")
        out = enc.encode_image(x)
        assert tuple(out.features.shape) == (1, info.embed_dim)
        assert (out.proj is None) == (info.proj_dim is None)
        maps = enc.forward_intermediates(x, 1)
        assert maps[0].ndim == 4 and maps[0].shape[-1] == size // PATCH[name]
    if info.has_text and name not in ("minilm", "plip"):  # tokenizers come with the weights
        t = enc.encode_text(enc.tokenize(["tumor"]).to("meta"))
        assert tuple(t.shape) == (1, info.proj_dim)


PATCH = {
    "uni": 16,
    "uni2": 14,
    "virchow2": 14,
    "virchow": 14,
    "h-optimus-0": 14,
    "prov-gigapath": 16,
    "phikon": 16,
    "phikon-v2": 16,
    "plip": 32,
    "quiltnet": 32,
    "conch": 16,
    "h-optimus-1": 14,
    "h0-mini": 14,
    "gpfm": 14,
    "midnight": 14,
    "conch_v15": 16,
    "omiclip": 14,
}
