"""What a user sees of a study: the terminal's tables and progress, the HTML report and its
figures, the notes and the server of optuna-dashboard. Reads studies through
``edgeslim.search.records``."""
