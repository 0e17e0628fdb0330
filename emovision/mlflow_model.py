"""MLflow model-from-code entry: `mlflow.pyfunc.log_model(python_model=<this file>)` copies it
into every registered version, and loading that version runs it. It only names the model
class; the code lives in emovision/serving.py (tested like the rest of the library)."""
import mlflow

from emovision.serving import EmotionModel

mlflow.models.set_model(EmotionModel())
