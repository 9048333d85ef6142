"""Drop-in callbacks that record a training loop you already have through :mod:`ptyparity.record`.

- :class:`ptyparity.integrations.lightning.ParityCallback` for a ``lightning.Trainer``;
- :class:`ptyparity.integrations.keras.ParityCallback` for ``keras.Model.fit``.

Both take one small function of yours, ``predict_patches(model, batch) -> (amp, phase)``, and
record a ``train`` run: your params, the losses of every epoch, and the patch statistics and
debug dump at the start and at the end of training. Nothing here imports ``ptyparity.backends``:
your model stays yours. Importing this package imports no framework.
"""
