"""Options data: schema, storage (fsspec: local, S3/MinIO, GCS, Azure), sources, features and datasets.

Kept light on purpose (no heavy imports here): import the modules you need, e.g.
``from greekfire.data.features import build_samples`` or ``from greekfire.data.storage_check import check_storage``.

Modules: ``schema`` (Arrow schemas, cleaning, partitioned Parquet), ``storage`` (``open_fs``,
``check_storage``), ``synthetic`` (Heston market generator), ``spx`` (real SPXW quotes + S&P 500 history),
``features`` (``build_samples``, ``time_split``, ``Normalizer``: the one input scaler, also the models'),
``dataset`` (``OptionsDataset``, ``StreamingOptionsDataset``, ``write_samples``, ``write_splits``),
``loaders`` (the training loaders ``make_loader`` and ``make_stream_loader``) and ``indicators`` (``sma``,
``ema``, ``rsi``, ``realized_vol``).
"""
