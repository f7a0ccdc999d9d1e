"""Load forecasts: the predictors the loop asks for the next interval's load (reactive, EWMA, LSTM in plain numpy
from the shipped `lstm.npz`, oracle for experiments) and the LSTM's training.

Pure: never imports `control`, `executors`, `kubernetes`, `sim`, HTTP clients or servers (`.importlinter`).
"""
