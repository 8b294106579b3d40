"""The engine: training a run, from its first batch to its test, on one device or many.

- ``device``: the device, the weights' memory layout, the forward pass's precision;
- ``distributed``: torchrun/DDP (the rank, the world, reductions);
- ``interrupts``: Ctrl-C and SIGTERM become a saved, resumable stop;
- ``optim``: the optimiser (Adam, SGD, Muon), the run's length in steps and the learning-rate schedule;
- ``averaging``: weight averaging (EMA, lookahead);
- ``infer``: logits over a stream of batches, with test-time views;
- ``budget``: training to a time budget (time a few steps, plan the rest);
- ``transfer``: starting from a trained model (``--init-from``);
- ``mlflow_run``: one run's MLflow run (the store's client, params and metrics, reopened on resume);
- ``tracking``: TensorBoard and MLflow;
- ``build``: a run before its first epoch (device, data, plan, model, batches, optimiser, folder), or resumed;
- ``train``: the run itself: ``train``, ``train_one_epoch``, ``train_step`` (forward, loss, backward, step), the test.

Nothing is imported here, so that ``cifarlab --help`` does not import torch.
"""
