"""alsel in a notebook: arrays in, no HDF5 files. Run as plain Python (python examples/notebook.py) or
paste the cells into Jupyter. Any (N, D) unit-row numpy arrays or torch tensors work in place of the
synthetic world: CLIP embeddings of your images and captions, for example."""

import numpy as np

import alsel

# %% a world: 1,000 images with 5 captions each; 100 images are paired, 700 form the pool, 200 the test set
world = alsel.make_world(images=1000, captions=5, classes=20, dim=32, seed=0)
rng = np.random.default_rng(0)
order = rng.permutation(1000)
paired, pool, test = order[:100], order[100:800], order[800:]


def pairs(rows):
    """Images of `rows` with their 5 captions each, and text_image (the image row of each caption)."""
    captions = (rows[:, None] * 5 + np.arange(5)).ravel()
    return world.images[rows], world.captions[captions], np.repeat(np.arange(len(rows)), 5)


paired_images, paired_texts, text_image = pairs(paired)
pool_images = world.images[pool]
test_images, test_texts, test_text_image = pairs(test)

# %% thresholds ξ (one per paired caption) and hard-negative scores of the pool
xi = alsel.xi(paired_images, paired_texts, text_image)
print(f"ξ: {len(xi)} thresholds, mean {xi.mean():.3f}")
scores = alsel.hard_negative_scores(paired_images, paired_texts, pool_images, text_image, weight="surplus")
print(f"{(scores.count > 0).sum()} of {len(pool_images)} pool images are hard negatives for at least one caption")

# %% a strategy: which 20 pool images to caption next (core-set, the README's recommendation; any name of
# `alsel strategies` works, with its options as keywords)
for name, options in (("coreset", {}), ("hn", {"fill": "closest"}), ("typiclust", {"max_clusters": 200})):
    chosen = alsel.select(name, pool_images, 20, paired_images=paired_images, paired_texts=paired_texts,
                          text_image=text_image, seed=0, **options)
    print(f"{chosen.attrs['strategy']:>10}: pool rows {chosen.rows[:8].tolist()} ...")

# %% retrieval metrics of the test pairs (raw embeddings)
m = alsel.recall(test_images, test_texts, test_text_image)
print(f"test R@1 image→text {m['i2t_r1']:.1f}, text→image {m['t2i_r1']:.1f}, R-sum {m['rsum']:.1f}")
