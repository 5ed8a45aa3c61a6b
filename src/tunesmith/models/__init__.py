"""Models: reference resolution (hub id, local folder, packaged starter), the one place a model is built
for a task, its attention kernel, and what is read from a loaded model under its training wrappers.

(A regular package, not a namespace one, so that import-linter's graph (grimp) sees its modules and the
layers contract in .importlinter covers it.)
"""
