"""The three terms of CORA's objective (MODEL.md section 3), keras.ops only.

Each function is usable on its own with any backend's tensors; embeddings
are expected L2-normalised.
"""

from __future__ import annotations

from keras import ops


def same_image(image_ids):
    """(B, B) bool: rows i and j show the same image (diagonal included)."""
    return image_ids[:, None] == image_ids[None, :]


def entity_match(entity_name_ids, entity_attribute_ids, graph_name_ids, graph_attribute_ids):
    """(B_images, B, E) bool: image i's un-augmented graph holds entity (b, e).

    True when graph i has an entity with the same name id whose attribute
    ids contain every (nonzero) attribute id of entity (b, e). Id 0 is
    padding; a padded entity never matches.
    """
    names = entity_name_ids[None, :, :, None]  # (1, B, E, 1)
    same_name = ops.logical_and(graph_name_ids[:, None, None, :] == names, names != 0)
    attrs = entity_attribute_ids[None, :, :, None, :, None]  # (1, B, E, 1, A, 1)
    held = graph_attribute_ids[:, None, None, :, None, :]  # (Bi, 1, 1, G, 1, A2)
    present = ops.any(attrs == held, axis=-1)  # (Bi, B, E, G, A)
    covered = ops.all(ops.logical_or(present, entity_attribute_ids[None, :, :, None, :] == 0), axis=-1)
    return ops.any(ops.logical_and(same_name, covered), axis=-1)


def _one_direction(scores, positives, valid_columns, valid_rows, eps):
    """Mean over valid rows of -mean_{positives} log p (supervised InfoNCE)."""
    masked = ops.where(valid_columns, scores, -1e30)
    shifted = scores - ops.stop_gradient(ops.max(masked, axis=1, keepdims=True))
    shifted = ops.where(valid_columns, shifted, -1e4)
    exp = ops.exp(shifted)
    negatives = ops.logical_and(ops.logical_not(positives), valid_columns)
    negative_sum = ops.sum(ops.where(negatives, exp, 0.0), axis=1, keepdims=True)
    log_p = shifted - ops.log(negative_sum + exp + eps)
    positives = ops.logical_and(positives, valid_columns)
    count = ops.sum(ops.cast(positives, "float32"), axis=1)
    per_row = ops.sum(ops.where(positives, log_p, 0.0), axis=1) / ops.maximum(count, 1.0)
    rows = ops.cast(valid_rows, "float32")
    return -ops.sum(per_row * rows) / ops.maximum(ops.sum(rows), 1.0)


def supervised_contrastive_loss(images, texts, positives, text_mask, temperature=0.01):
    """Contrastive term (a): image -> text rows plus text -> image columns.

    Args:
        images: (B, D) image embeddings.
        texts: (T, D) captions and entities, `S = images texts^T / tau`.
        positives: (B, T) bool positive pairs.
        text_mask: (T,) bool, False for padding columns (ignored entirely).
        temperature: tau.
    """
    scores = ops.matmul(images, ops.transpose(texts)) / temperature
    text_mask = ops.cast(text_mask, "bool")
    all_images = ops.ones_like(scores[:, 0]) > 0
    row = _one_direction(scores, positives, text_mask[None, :], all_images, 1e-9)
    column = _one_direction(
        ops.transpose(scores), ops.transpose(positives), all_images[None, :], text_mask, 1e-6
    )
    return row + column


def bound_contrastive_loss(images, texts, positives, text_mask, temperature, main_width):
    """Term (a) for embeddings with spatial binding dimensions after the
    first `main_width`: the main dimensions scored alone, plus the whole
    score with the main part held fixed (stop_gradient). The towers then
    train as they would without the binding (scored with it, they leaned
    on it: test RSUM of the main part 430.6 against 460.9), and the
    binding learns to add to their score.
    """
    fixed = ops.stop_gradient
    images, texts = ops.convert_to_tensor(images), ops.convert_to_tensor(texts)
    main = supervised_contrastive_loss(
        images[:, :main_width], texts[:, :main_width], positives, text_mask, temperature
    )
    whole = supervised_contrastive_loss(
        ops.concatenate([fixed(images[:, :main_width]), images[:, main_width:]], axis=1),
        ops.concatenate([fixed(texts[:, :main_width]), texts[:, main_width:]], axis=1),
        positives, text_mask, temperature,
    )
    return main + whole


def hardest_triplet_loss(images, captions, same, margin=0.35, hardest=1.0):
    """Term (b): VSE++ max-violation triplet, mean over both directions.

    `same` (B, B) bool marks pairs showing the same image; they and the
    diagonal are never negatives. `hardest` (a float or scalar tensor, 1
    or 0) picks the max over negatives (1, the paper's term) or their sum
    (0, VSE++/VSE-infinity's warm-up form, which keeps every negative's
    gradient while the embeddings are still random).
    """
    sims = ops.matmul(images, ops.transpose(captions))
    diagonal = ops.diagonal(sims)
    excluded = ops.logical_or(same, ops.eye(ops.shape(sims)[0]) > 0)
    caption_cost = ops.where(excluded, 0.0, ops.relu(margin + sims - diagonal[:, None]))
    image_cost = ops.where(excluded, 0.0, ops.relu(margin + sims - diagonal[None, :]))
    hardest_cost = ops.mean(ops.max(caption_cost, axis=1)) + ops.mean(ops.max(image_cost, axis=0))
    summed_cost = ops.mean(ops.sum(caption_cost, axis=1)) + ops.mean(ops.sum(image_cost, axis=0))
    return hardest * hardest_cost + (1.0 - hardest) * summed_cost


def specificity_loss(images, captions, entities, entity_mask, margin=0.35):
    """Term (c): each real entity must match its image less than its caption does.

    Mean over real entities m of [I_b . Z_m + margin - I_b . C_b]_+.
    """
    own = ops.sum(images * captions, axis=-1)
    entity_scores = ops.einsum("bd,bed->be", images, entities)
    mask = ops.cast(entity_mask, "float32")
    cost = ops.relu(entity_scores + margin - own[:, None]) * mask
    return ops.sum(cost) / ops.maximum(ops.sum(mask), 1.0)


def relation_swap_loss(images, captions, swaps, swap_mask, temperature=0.05):
    """Relation-swap term: mean over captions with a swap of
    -log(e^{I.C / tau} / (e^{I.C / tau} + e^{I.S / tau})), S the caption
    composed with one relation's subject and object exchanged.

    Args:
        images: (B, D) the image of each caption.
        captions, swaps: (B, D) captions and their swaps.
        swap_mask: (B,) bool, False where a caption has no swap.
    """
    margin = ops.sum(images * (swaps - captions), axis=-1) / temperature
    mask = ops.cast(swap_mask, "float32")
    return ops.sum(ops.softplus(margin) * mask) / ops.maximum(ops.sum(mask), 1.0)


def region_entity_cost(rows, counts, entities, entity_mask, owner, temperature=0.05):
    """(B,) region-entity cost of each caption: over its real entities, the
    sum of -log softmax_i(max_r rows[i, r] . entity / tau) at its own image.

    Args:
        rows: (I, N, D) unit encoded region rows of the batch's images.
        counts: (I,) valid rows per image.
        entities: (B, E, D) unit entity embeddings; entity_mask (B, E).
        owner: (B,) index in [0, I) of each caption's image.
    """
    n = rows.shape[1]
    valid = ops.arange(n)[None, :] < ops.cast(counts, "int32")[:, None]  # (I, N)
    scores = ops.einsum("bed,ind->bein", entities, rows)
    best = ops.max(ops.where(valid[None, None], scores, -1e4), axis=-1) / temperature  # (B, E, I)
    own = ops.take_along_axis(best, ops.cast(owner, "int32")[:, None, None], axis=-1)[..., 0]
    cost = ops.logsumexp(best, axis=-1) - own
    return ops.sum(cost * ops.cast(entity_mask, cost.dtype), axis=-1)


def relation_readout_cost(rows, counts, places, subjects, objects, image, signs, temperature=0.05):
    """(Pr,) relation read-out cost: softplus(-sum_k q_k (P_k(s) - P_k(o))),
    P(x) the coordinates of the relation's image rows averaged with
    softmax(row . x / tau) weights, q the predicate read-out.

    It trains the spatial binding's coordinates and predicate read-out
    with each entity's own regions picked out sharply, which the
    binding's linear weighting of every row cannot do from a start.

    Args:
        rows: (I, N, D) unit encoded region rows; counts (I,) valid rows.
        places: (I, N, K) the rows' coordinates.
        subjects, objects: (Pr, D) unit entity embeddings of each relation's ends.
        image: (Pr,) index in [0, I) of each relation's image.
        signs: (Pr, K) predicate read-out (zero rows for padding).
    """
    n = rows.shape[1]
    valid = ops.take(ops.arange(n)[None, :] < ops.cast(counts, "int32")[:, None], image, axis=0)
    own_rows, own_places = ops.take(rows, image, axis=0), ops.take(places, image, axis=0)

    def position(entity):
        scores = ops.einsum("pnd,pd->pn", own_rows, entity) / temperature
        weights = ops.softmax(ops.where(valid, scores, -1e4), axis=-1)
        return ops.einsum("pn,pnk->pk", weights, own_places)

    difference = position(subjects) - position(objects)
    return ops.softplus(-ops.sum(ops.multiply(signs, difference), axis=-1))


def contrastive_positives(targets, entity_mask, pool_same_image=False):
    """(B, B + B*E) positive mask of term (a) from the objective's targets.

    Image i's graph is row i's caption graph (the release). With
    `pool_same_image` it is the union of the graphs of every row showing
    the same image: in image-grouped batches those rows share one image
    embedding, which must not be a positive of an entity in one row and a
    negative in another.
    """
    same = same_image(targets["image_ids"])
    batch, e_max = entity_mask.shape[0] or ops.shape(entity_mask)[0], entity_mask.shape[1]
    owner = ops.repeat(ops.eye(batch) > 0, e_max, axis=1)  # column b*E+e owned by row b
    match = entity_match(
        targets["entity_name_ids"],
        targets["entity_attribute_ids"],
        targets["graph_name_ids"],
        targets["graph_attribute_ids"],
    )
    match = ops.reshape(match, (batch, -1))
    if pool_same_image:
        match = ops.matmul(ops.cast(same, "float32"), ops.cast(match, "float32")) > 0
    entity_part = ops.logical_or(owner, match)
    return ops.concatenate([same, entity_part], axis=1)


def cora_objective(outputs, targets, config, hardest=1.0, pool_same_image=False, main_width=None) -> dict:
    """All terms and the weighted total (`loss`) for one batch.

    Args:
        outputs: `CoraModel` outputs (`image`, `caption`, `entities`,
            `entity_mask`; `swap_caption` and `swap_mask` when training
            with relation swaps, else the swap term is 0;
            `region_entity_cost` when training with the region-entity
            term, `relation_readout_cost` and `relation_readout_real`
            with the relation read-out term, else they are 0).
        targets: the targets of `cora_keras.inputs`.
        config: a `LossConfig` (weights, margins, temperature).
        hardest: 1 for the max-violation triplet, 0 for its warm-up form
            (see `hardest_triplet_loss`).
        pool_same_image: entity positives from each image's pooled graphs
            (see `contrastive_positives`; image-grouped batches).
        main_width: D where the embeddings carry spatial binding dimensions
            after their first D (term (a) is then `bound_contrastive_loss`).
    """
    images, captions = outputs["image"], outputs["caption"]
    entities, entity_mask = outputs["entities"], outputs["entity_mask"]
    batch, e_max, d = ops.shape(entities)[0], entities.shape[1], entities.shape[2]
    texts = ops.concatenate([captions, ops.reshape(entities, (batch * e_max, d))], axis=0)
    text_mask = ops.concatenate(
        [ops.ones_like(images[:, 0]) > 0, ops.reshape(ops.cast(entity_mask, "bool"), (-1,))], axis=0
    )
    positives = contrastive_positives(targets, entity_mask, pool_same_image)
    if main_width is None:
        contrastive = supervised_contrastive_loss(images, texts, positives, text_mask, config.temperature)
    else:
        contrastive = bound_contrastive_loss(images, texts, positives, text_mask, config.temperature, main_width)
    triplet = hardest_triplet_loss(
        images, captions, same_image(targets["image_ids"]), config.triplet_margin, hardest
    )
    specificity = specificity_loss(images, captions, entities, entity_mask, config.specificity_margin)
    if "swap_caption" in outputs:
        swap = relation_swap_loss(
            images, captions, outputs["swap_caption"], outputs["swap_mask"], config.temperature
        )
    else:
        swap = ops.zeros_like(contrastive)
    if "region_entity_cost" in outputs:
        region_entity = ops.sum(outputs["region_entity_cost"]) / ops.maximum(
            ops.sum(ops.cast(entity_mask, "float32")), 1.0
        )
    else:
        region_entity = ops.zeros_like(contrastive)
    if "relation_readout_cost" in outputs:
        real = ops.cast(outputs["relation_readout_real"], "float32")
        readout = ops.sum(ops.multiply(outputs["relation_readout_cost"], real)) / ops.maximum(ops.sum(real), 1.0)
    else:
        readout = ops.zeros_like(contrastive)
    total = (
        config.contrastive_weight * contrastive
        + config.triplet_weight * triplet
        + config.specificity_weight * specificity
        + config.relation_swap_weight * swap
        + config.region_entity_weight * region_entity
        + config.relation_readout_weight * readout
    )
    return {
        "loss": total,
        "contrastive_loss": contrastive,
        "triplet_loss": triplet,
        "specificity_loss": specificity,
        "relation_swap_loss": swap,
        "region_entity_loss": region_entity,
        "relation_readout_loss": readout,
    }
