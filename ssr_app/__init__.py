"""The application layer: the inference engine and its command line, the model export, the launchers behind
``basicsr/train.py`` / ``basicsr/test.py``. It sits above the models and the pipelines; nothing imports it
but the scripts."""
