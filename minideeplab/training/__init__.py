"""Training, written once for the PyTorch and the NumPy DeepLab (``minideeplab.train`` is the public face):

    config      TrainConfig, check_same_run
    data        the reproducible training data (epoch_batches, Augmented), FirstN, open_split, open_val
    checkpoint  save_checkpoint (atomic), load_checkpoint, export_checkpoint
    evaluation  predict, evaluate (confusions, scores), segment
    loop        fit(config, backend): setup, resume, epochs, evaluation, best.pt / last.pt, logging, torchrun;
                scheduled_lr (poly, warm-up)
    optimizers  OPTIMIZERS: sgd, adamw; torch's optimiser, its scratch twin, their states' two layouts
    torch_backend  TorchBackend: the reference model, torch.optim, DistributedDataParallel; build
    numpy_backend  NumpyBackend: the scratch model, scratch.optim (sgd_step, adamw_step); train (--backend scratch)
"""
