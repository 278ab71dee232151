"""Reusable studies: each returns a StudyResult (tidy rows, a headline table, figures)."""
