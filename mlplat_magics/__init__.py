"""IPython extension with %feature / %train magics and widgets (filled by the notebook-front issue)."""
