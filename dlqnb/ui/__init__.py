"""What people look at: Plotly figures that only read results (:mod:`~dlqnb.ui.plotting`) and the Deep Network
Quantizer app for JupyterLab (:mod:`~dlqnb.ui.app`). Importing :mod:`dlqnb` does not import these (nor Plotly or
ipywidgets) until they are used.
"""
