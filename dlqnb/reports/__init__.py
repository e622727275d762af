"""Batch reports: ``python -m dlqnb report`` runs notebooks with papermill into HTML reports and an index
(:mod:`~dlqnb.reports.report`); notebooks record their headline numbers and key figure with
:mod:`~dlqnb.reports.records`.
"""
