"""Pure decision cores (no I/O): module states, the mirror automaton, data generations.

Public surface for the engine and tools:

* :func:`hakit.core.mirror.decide` with :class:`~hakit.core.mirror_model.MirrorState`,
  :class:`~hakit.core.mirror_model.MirrorSettings`, :func:`~hakit.core.mirror_model.initial_state`
  and :class:`~hakit.core.mirror_model.Decision`;
* events (:mod:`hakit.core.events`) and actions (:mod:`hakit.core.actions`);
* :mod:`hakit.core.states` (``ModuleState``, ``Readiness``, ``state_exit_code``,
  ``waitstate_reached``) and :mod:`hakit.core.generations`.

See ``docs/design/mirror-automaton.md`` for the theory of operation.
"""
