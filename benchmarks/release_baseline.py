"""Training throughput of a release-style CORA: eager PyTorch on padded shapes.

    python -m benchmarks.release_baseline --config configs/f30k_gru.yaml \
        --batch-size 32 --steps 8

The side-by-side baseline for `benchmarks/train_step.py`: an independent
PyTorch implementation of MODEL.md that computes the way the authors'
release does. Every caption is padded to E entities x A attributes and to
E x R relation slots per direction (each slot holding its own copy of the
predicate tokens), and the phrase GRUs, message layers and graph layers run
over all of it; the region encoder runs over all N rows (the config's
phrase and region budgets do not apply). Plain torch.nn
modules named as in the release checkpoint (checkpoint_layout.md, GRU
config with H = D), so `load_state_dict` takes a release state dict;
eager execution, torch's default thread count, AdamW, and the three-term
objective of MODEL.md section 3 in torch.

It is fed the same synthetic batches as train_step.py (same config, seed
and generator), converted to the padded layout before timing. Prints each
step's seconds, then the median after one warm-up step as `samples/s: X`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmarks.synthetic_steps import median_step_seconds, step_arguments, synthetic_batches
from cora_keras.config import LossConfig, ModelConfig, load_config

POSITION_DIM = 16
GPO_DIM = 32
IMAGE_MLP_DIM = 512


# ------------------------------------------------------------ padded inputs


def per_entity_relation_slots(
    relation_tokens: np.ndarray,
    relation_subject: np.ndarray,
    relation_object: np.ndarray,
    max_entities: int,
    max_relations: int,
) -> dict[str, np.ndarray]:
    """The release's per-entity relation layout from a caption's relation list.

    Relations are taken subject by subject (entity order, list order within
    a subject); each goes to a free active slot of its subject and a free
    passive slot of its object, at most `max_relations` of each per entity.
    Returns `active_tokens`, `passive_tokens` (B, E, R, T) with a copy of
    the predicate per slot (zeros in empty slots) and `active_object`
    (B, E, R), the entity an active message reads.
    """
    batch, _, t = relation_tokens.shape
    shape = (batch, max_entities, max_relations)
    active = np.zeros((*shape, t), np.int64)
    passive = np.zeros((*shape, t), np.int64)
    active_object = np.zeros(shape, np.int64)
    for b in range(batch):
        real = np.flatnonzero((relation_tokens[b] != 0).any(-1))
        order = real[np.argsort(relation_subject[b, real], kind="stable")]
        used_active = np.zeros(max_entities, np.int64)
        used_passive = np.zeros(max_entities, np.int64)
        for k in order:
            subject, obj = relation_subject[b, k], relation_object[b, k]
            if used_active[subject] < max_relations:
                active[b, subject, used_active[subject]] = relation_tokens[b, k]
                active_object[b, subject, used_active[subject]] = obj
                used_active[subject] += 1
            if used_passive[obj] < max_relations:
                passive[b, obj, used_passive[obj]] = relation_tokens[b, k]
                used_passive[obj] += 1
    return {"active_tokens": active, "passive_tokens": passive, "active_object": active_object}


def padded_inputs(x: Mapping[str, np.ndarray], max_relations: int) -> dict[str, torch.Tensor]:
    """Model inputs (cora_keras/inputs.py) as the release's padded torch tensors."""
    relation_real = (x["relation_tokens"] != 0).any(-1)
    entity_counts = (x["entity_tokens"] != 0).any(-1).sum(1)
    max_entities = x["entity_tokens"].shape[1]
    adjacency = np.zeros((len(entity_counts), max_entities, max_entities), np.float32)
    for b, count in enumerate(entity_counts):
        adjacency[b, np.arange(count), np.arange(count)] = 1.0
        ends = x["relation_subject"][b, relation_real[b]], x["relation_object"][b, relation_real[b]]
        adjacency[b, ends[0], ends[1]] = adjacency[b, ends[1], ends[0]] = 1.0
    slots = per_entity_relation_slots(
        x["relation_tokens"], x["relation_subject"], x["relation_object"], max_entities, max_relations
    )
    arrays = {
        "regions": np.asarray(x["regions"], np.float32),
        "region_counts": np.asarray(x["region_counts"], np.int64),
        "entity_tokens": np.asarray(x["entity_tokens"], np.int64),
        "attribute_tokens": np.asarray(x["attribute_tokens"], np.int64),
        "entity_counts": entity_counts.astype(np.int64),
        "relation_adjacency": adjacency,
        **slots,
    }
    return {name: torch.from_numpy(array) for name, array in arrays.items()}


def padded_targets(y: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The objective's targets as int64 torch tensors."""
    return {name: torch.from_numpy(np.asarray(array, np.int64)) for name, array in y.items()}


# ------------------------------------------------------------------ modules


def position_codes(counts: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """(B, length, dim) Transformer sinusoid of positions 0..count-1, zeros after."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    codes = torch.stack([torch.sin(position * frequency), torch.cos(position * frequency)], -1)
    valid = torch.arange(length)[None, :] < counts[:, None]
    return codes.reshape(length, dim)[None] * valid[..., None]


class GPO(nn.Module):
    """Generalised pooling: BiGRU over position codes scores the sorted features."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(GPO_DIM, GPO_DIM, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(GPO_DIM, 1, bias=False)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        k = int(lengths.max())
        valid = (torch.arange(k)[None, :] < lengths[:, None])[..., None]
        packed = pack_padded_sequence(position_codes(lengths, k, GPO_DIM), lengths, True, False)
        hidden = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=k)[0]
        scores = self.linear((hidden[..., :GPO_DIM] + hidden[..., GPO_DIM:]) / 2)
        weights = torch.softmax(scores.masked_fill(~valid, -10000.0) / 0.1, dim=1)
        ranked = features[:, :k].masked_fill(~valid, -10000.0).sort(dim=1, descending=True)[0]
        return (weights * ranked.masked_fill(~valid, 0.0)).sum(1)


class ImageEncoder(nn.Module):
    """Region features (B, N, F) -> image embedding (B, D), over every row."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        f, d = config.region_feature_size, config.embed_size
        self.dropout = nn.Dropout(config.region_dropout)
        self.linear = nn.Linear(f, d)
        self.mlp = nn.Sequential(
            nn.Linear(f, IMAGE_MLP_DIM), nn.BatchNorm1d(IMAGE_MLP_DIM), nn.ReLU(),
            nn.Linear(IMAGE_MLP_DIM, d),
        )
        self.lnorm, self.lnorm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.fc, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)
        self.pos_linear = nn.Linear(POSITION_DIM, d)
        self.attn_pool = nn.MultiheadAttention(d, config.num_heads, batch_first=True)
        self.gpool = GPO()

    def forward(self, regions: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        b, n, f = regions.shape
        x = self.dropout(regions)
        feat = self.linear(x) + self.mlp(x.reshape(b * n, f)).reshape(b, n, -1)
        codes = self.pos_linear(position_codes(counts, n, POSITION_DIM))
        h = self.lnorm(feat + self.dropout(codes))
        padded = torch.arange(n)[None, :] >= counts[:, None]
        feat = feat + self.attn_pool(h, h, h, key_padding_mask=padded, need_weights=False)[0]
        feat = feat + self.fc2(torch.relu(self.fc(self.lnorm2(feat))))
        return self.gpool(feat, counts)


class GraphAttention(nn.Module):
    """Stack of dense GATv2-style layers (MODEL.md 2.2) with the release's names."""

    def __init__(self, hidden: int, num_heads: int, layers: int, value_dropout: float,
                 between_dropout: float) -> None:
        super().__init__()
        head = hidden // num_heads
        self.num_heads = num_heads
        self.fc = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers))
        self.fc_val = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.Dropout(value_dropout)) for _ in range(layers)
        )
        self.fc_aff = nn.ParameterList(
            nn.Parameter(torch.randn(num_heads, head) / math.sqrt(head)) for _ in range(layers)
        )
        self.fc_aff_bias = nn.ParameterList(nn.Parameter(torch.zeros(num_heads)) for _ in range(layers))
        self.lnorms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.between = nn.Dropout(between_dropout)

    def layer(self, t: int, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """Layer t over nodes x (..., n, H); node i attends to j where adjacency > 0."""
        *lead, n, d = x.shape
        heads = (*lead, n, self.num_heads, d // self.num_heads)
        q = self.fc[t](x)
        k = self.fc2[t](x).reshape(heads)
        v = self.fc_val[t](x).reshape(heads)
        pair = nn.functional.leaky_relu(q.reshape(heads)[..., :, None, :, :] + k[..., None, :, :, :], 0.2)
        scores = (pair * self.fc_aff[t]).sum(-1) + self.fc_aff_bias[t]  # (..., i, j, heads)
        scores = scores.masked_fill(adjacency[..., None] <= 0, -1e9)
        mixed = torch.einsum("...ijh,...jhc->...ihc", torch.softmax(scores, dim=-2), v)
        return torch.relu(self.lnorms[t](mixed.reshape(*lead, n, d) + q))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for t in range(len(self.lnorms)):
            x = self.layer(t, self.between(x) if t else x, adjacency)
        return x


def encode_phrases(
    tokens: torch.Tensor, embeddings: nn.Embedding, gru: nn.GRU, fc: nn.Sequential
) -> torch.Tensor:
    """Phrases (..., T) of every slot, padded ones included -> ReLU(word_fc(last GRU state))."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    lengths = (flat != 0).sum(-1).clamp(min=1)  # a padded slot reads one token
    last = gru(pack_padded_sequence(embeddings(flat), lengths, True, False))[1][0]
    return fc(last).reshape(*tokens.shape[:-1], -1)


def word_fc(word_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Linear(W -> H) -> ReLU -> Dropout (`word_fc.0` in the release)."""
    return nn.Sequential(nn.Linear(word_dim, hidden), nn.ReLU(), nn.Dropout(dropout))


class EntityComposer(nn.Module):
    """Object names and attributes (B, E[, A], T) -> entity embeddings (B, E, H)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        w, h = config.word_dim, config.composer_hidden
        self.word_embeddings = nn.Embedding(config.vocab_size, w)
        self.rnn_ent = nn.GRU(w, w, batch_first=True)
        self.rnn_attr = nn.GRU(w, w, batch_first=True)
        self.word_fc = word_fc(w, h, config.word_dropout)
        self.graph_attn = GraphAttention(
            h, config.num_heads, config.entity_layers, 0.0, config.composer_dropout
        )

    def forward(self, entity_tokens: torch.Tensor, attribute_tokens: torch.Tensor) -> torch.Tensor:
        names = encode_phrases(entity_tokens, self.word_embeddings, self.rnn_ent, self.word_fc)
        attributes = encode_phrases(attribute_tokens, self.word_embeddings, self.rnn_attr, self.word_fc)
        nodes = torch.cat([names[:, :, None], attributes], 2)  # (B, E, 1 + A, H)
        real = (attribute_tokens != 0).any(-1).float()
        adjacency = torch.zeros(*real.shape[:2], nodes.shape[2], nodes.shape[2])
        adjacency[..., 0, 0] = 1.0
        adjacency[..., 0, 1:] = real
        adjacency[..., 1:, 0] = real
        return self.graph_attn(nodes, adjacency)[:, :, 0]


class RelationComposer(nn.Module):
    """Entities (B, E, H) + per-entity relation slots -> caption embedding (B, D)."""

    def __init__(self, config: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        w, h, p = config.word_dim, config.composer_hidden, config.composer_dropout
        self.word_embeddings = word_embeddings  # tied with the entity composer's
        self.rnn_relation = nn.GRU(w, w, batch_first=True)
        self.word_fc = word_fc(w, h, config.word_dropout)
        self.pos_linear = nn.Linear(POSITION_DIM, h)
        self.pos_lnorm = nn.LayerNorm(h)
        self.graph_attention = GraphAttention(
            h, config.num_heads, config.relation_layers, config.relation_attention_dropout, p
        )
        self.active_edge = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(p))
        self.passive_edge = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Dropout(p))
        self.lnorm = nn.LayerNorm(h)
        self.dropout = nn.Dropout(p)
        self.gpool = GPO()

    def forward(self, entities: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        counts = inputs["entity_counts"]
        codes = self.pos_linear(position_codes(counts, entities.shape[1], POSITION_DIM))
        e = self.pos_lnorm(entities + self.dropout(codes))
        active_tokens, passive_tokens = inputs["active_tokens"], inputs["passive_tokens"]
        rows = torch.arange(e.shape[0])[:, None, None]
        objects = e[rows, inputs["active_object"]]  # (B, E, R, H)
        own = e[:, :, None].expand_as(objects)
        predicates = [
            encode_phrases(tokens, self.word_embeddings, self.rnn_relation, self.word_fc)
            for tokens in (active_tokens, passive_tokens)
        ]
        active = self.active_edge(torch.cat([predicates[0], objects], -1))
        passive = self.passive_edge(torch.cat([predicates[1], own], -1))
        active_real = (active_tokens != 0).any(-1)[..., None]
        passive_real = (passive_tokens != 0).any(-1)[..., None]
        total = (active * active_real + passive * passive_real).sum(2)
        count = (active_real.sum(2) + passive_real.sum(2)).float()
        e = self.dropout(self.lnorm(e + total / (count + 1e-8)))
        return self.gpool(self.graph_attention(e, inputs["relation_adjacency"]), counts)


class ReleaseCora(nn.Module):
    """The whole model; `state_dict()` keys are the release checkpoint's."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        unsupported = {
            "composer_hidden == embed_size": config.composer_hidden == config.embed_size,
            "text_encoder == 'gru'": config.text_encoder == "gru",
            "graph_layer == 'cora'": config.graph_layer == "cora",
            "not use_graph_global": not config.use_graph_global,
        }
        missing = [name for name, holds in unsupported.items() if not holds]
        if missing:
            raise ValueError(f"release baseline supports only configs with {', '.join(missing)}")
        self.image_encoder = ImageEncoder(config)
        self.entity_composer = EntityComposer(config)
        self.relation_composer = RelationComposer(config, self.entity_composer.word_embeddings)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L2-normalised `image`, `caption` (B, D), `entities` (B, E, D, padded
        slots zero) and `entity_mask` (B, E)."""
        image = self.image_encoder(inputs["regions"], inputs["region_counts"])
        entity_mask = (inputs["entity_tokens"] != 0).any(-1)
        entities = self.entity_composer(inputs["entity_tokens"], inputs["attribute_tokens"])
        caption = self.relation_composer(entities, inputs)
        normalize = nn.functional.normalize
        return {
            "image": normalize(image, dim=-1),
            "caption": normalize(caption, dim=-1),
            "entities": normalize(entities, dim=-1) * entity_mask[..., None],
            "entity_mask": entity_mask,
        }


# ---------------------------------------------------------------- objective


def entity_matches(targets: Mapping[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: image i's un-augmented graph holds real entity m (same name,
    attribute set containing m's attributes)."""
    names = targets["entity_name_ids"][mask]  # (M,)
    attributes = targets["entity_attribute_ids"][mask]  # (M, A)
    graph_names, graph_attributes = targets["graph_name_ids"], targets["graph_attribute_ids"]
    same_name = (graph_names[:, None, :] == names[None, :, None]) & (names != 0)[None, :, None]
    held = (attributes[None, :, None, :, None] == graph_attributes[:, None, :, None, :]).any(-1)
    covered = (held | (attributes == 0)[None, :, None, :]).all(-1)  # (B, M, G)
    return (same_name & covered).any(-1)


def contrastive_direction(scores: torch.Tensor, positives: torch.Tensor, eps: float) -> torch.Tensor:
    """-mean over rows of the mean log p over each row's positives."""
    shifted = scores - scores.max(1, keepdim=True)[0].detach()
    exp = shifted.exp()
    negatives = (exp * ~positives).sum(1, keepdim=True)
    log_p = shifted - torch.log(negatives + exp + eps)
    return -((log_p * positives).sum(1) / positives.sum(1)).mean()


def release_objective(
    outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], config: LossConfig
) -> dict[str, torch.Tensor]:
    """MODEL.md section 3 over the real entities; `loss` is the weighted total."""
    images, captions, mask = outputs["image"], outputs["caption"], outputs["entity_mask"]
    entities = outputs["entities"][mask]  # (M, D)
    batch = images.shape[0]
    owner = torch.arange(batch)[:, None].expand_as(mask)[mask]
    ids = targets["image_ids"]
    same = ids[:, None] == ids[None, :]
    owned = owner[None, :] == torch.arange(batch)[:, None]
    positives = torch.cat([same, owned | entity_matches(targets, mask)], 1)
    scores = images @ torch.cat([captions, entities]).T / config.temperature
    contrastive = contrastive_direction(scores, positives, 1e-9) + contrastive_direction(
        scores.T, positives.T, 1e-6
    )
    sims = images @ captions.T
    diagonal = sims.diagonal()
    excluded = same | torch.eye(batch, dtype=torch.bool)
    margin = config.triplet_margin
    caption_cost = (margin + sims - diagonal[:, None]).clamp(min=0).masked_fill(excluded, 0.0)
    image_cost = (margin + sims - diagonal[None, :]).clamp(min=0).masked_fill(excluded, 0.0)
    triplet = caption_cost.max(1)[0].mean() + image_cost.max(0)[0].mean()
    own = (images * captions).sum(-1)[owner]
    entity_scores = (images[owner] * entities).sum(-1)
    specificity = (entity_scores + config.specificity_margin - own).clamp(min=0).mean()
    terms = {"contrastive_loss": contrastive, "triplet_loss": triplet, "specificity_loss": specificity}
    weights = (config.contrastive_weight, config.triplet_weight, config.specificity_weight)
    return {"loss": sum(w * term for w, term in zip(weights, terms.values())), **terms}


# --------------------------------------------------------------------- main


def main() -> None:
    args = step_arguments(__doc__.splitlines()[0]).parse_args()
    config = load_config(args.config, args.set)
    batches = [
        (padded_inputs(x, config.model.max_relations), padded_targets(y))
        for x, y in synthetic_batches(config.model, args.batch_size, args.steps)
    ]
    torch.manual_seed(0)
    model = ReleaseCora(config.model).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay
    )

    def step(x, y) -> float:
        loss = release_objective(model(x), y, config.loss)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    median = median_step_seconds(step, batches, args.steps)
    params = sum(p.numel() for p in model.parameters())
    print(f"backend: torch {torch.__version__} eager, padded (release style)  threads: "
          f"{torch.get_num_threads()}  batch: {args.batch_size}  params: {params:,}  "
          f"median step: {median:.3f} s")
    print(f"samples/s: {args.batch_size / median:.1f}")


if __name__ == "__main__":
    main()
