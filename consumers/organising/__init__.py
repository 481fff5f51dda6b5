"""The organisers' follow-up queue: groups and the postcode districts they own, organisers,
the tasks' life (open, claimed, done, cancelled) and its history, outcomes that feed back, and
the leaders each group is growing.

The sink of ``task.created`` and the one writer of ``tasks``, ``task_events``, ``groups``,
``group_areas``, ``organisers``, ``organiser_groups`` and ``organiser_sessions``. Its pages
(``pages.py``) and JSON routes (``api.py``) live here too, with sign-in and sessions
(``web.py``, ``accounts.py``, ``passwords.py``, ``throttle.py``); ``service.FollowUps`` is
what they (and `engage queue`) call.
"""
