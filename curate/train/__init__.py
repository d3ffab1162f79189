"""The bundled reference trainer: a small video diffusion transformer that learns from curate's shards.

    model.py   the network (one file): config, named sizes, the DiT over VAE latents
    flow.py    the objective: rectified flow (logit-normal t, shift) and the Euler sampler with guidance
    data.py    WebDataset reader of the shards: latents + text embeddings, batches of one latent shape
    loop.py    the training loop (AdamW, warm-up, clipping, EMA, bf16 on CUDA, checkpoints, DDP)
    sample.py  `curate sample`: checkpoint + prompt -> latents -> VAE decode -> mp4
"""
