"""The code MLflow runs to build a served model (MLflow's "models from code"), so that a
logged model holds code and weights, never a pickled Python object.

`lm_tasks.serving.log_model` logs this file as the pyfunc's `python_model`; loading the
model runs it with the model_config logged beside it, whose `task` picks the class.
"""

import mlflow

from lm_tasks.serving import SERVED

mlflow.models.set_model(SERVED[mlflow.models.ModelConfig().get("task")]())
