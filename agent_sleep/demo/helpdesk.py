"""The helpdesk agent: a LangGraph agent on the local model that logs what it does.

The helpdesk of Halvik, a (fictional) shop for outdoor gear. One tool (order
lookup), routed by a small rule, because a 135M-parameter model cannot be
trusted to call tools (with the tools in its prompt SmolLM2-135M-Instruct
writes prose about the function instead of a call); the model then writes the
answer from the tool's result. Any other question the model answers from what
it knows (its weights and live adapters: the prompt holds no knowledge base).
The answer node never shows tool markup: a reply holding some, or one the chat
model gave up on, is replaced by a plain apology (:func:`shown`). Decoding is
greedy. Capture is one callback in the run config. After each answer an
automatic check records feedback, the way a deployment would record a user's
thumbs-up or a resolved ticket: "resolved" when the answer uses the status that
was looked up. (:mod:`agent_sleep.demo.day` runs a whole day on this agent.)

:func:`run_helpdesk` runs conversations and returns them as data; :func:`main`
prints them for a person. Nothing here trains or deploys anything.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

from agent_sleep.capture.callback import SleepCallbackHandler
from agent_sleep.runtime.chat_format import has_markup
from agent_sleep.runtime.chat_model import FALLBACK_REPLY
from agent_sleep.store import ExperienceStore

AGENT = "helpdesk"
ORDERS = {
    "A1001": "shipped on 25 November, arriving 29 November",
    "B2002": "delayed: waiting for stock, new date 3 December",
    "C3003": "delivered on 20 November",
}
ORDER_ID = re.compile(r"\b([A-Z]\d{4})\b")
QUESTIONS = [
    "Hi, where is my order A1001?",
    "Order B2002 has not arrived. What is going on?",
    "Can you check the status of C3003 please?",
]
SYSTEM_PROMPT = ("You are the customer helpdesk of Halvik, a shop for outdoor gear. Answer in one or two "
                 "short sentences, using the order information when you were given some.")
ORDER_PROMPT = ("You are a helpful helpdesk assistant. Answer in one or two short sentences "
                "using the order information you were given.")
"""The system prompt of the answer after an order lookup (SmolLM2 states the looked-up dates more
reliably with it than with :data:`SYSTEM_PROMPT`: 3 of 3 order questions right against 1 of 3)."""


@tool
def lookup_order(order_id: str) -> str:
    """Look up the shipping status of an order by its id (like A1001)."""
    status = ORDERS.get(order_id.upper())
    return f"Order {order_id}: {status}." if status else f"Order {order_id}: not found."


def build_agent(model: Any, *, system_prompt: str | None = SYSTEM_PROMPT,
                order_prompt: str | None = ORDER_PROMPT) -> Any:
    """The helpdesk graph: route -> (tool) -> answer, with an in-memory checkpointer per thread.

    The answer's system message is ``order_prompt`` after an order lookup, else ``system_prompt``
    (None: no system message, so the chat template's default applies).
    """

    def route(state: MessagesState) -> dict[str, Any]:
        match = ORDER_ID.search(str(state["messages"][-1].content))
        if not match:
            return {}
        call = {"name": "lookup_order", "args": {"order_id": match.group(1)}, "id": f"call_{uuid.uuid4().hex[:8]}"}
        return {"messages": [AIMessage("", tool_calls=[call])]}

    def answer(state: MessagesState) -> dict[str, Any]:
        looked_up = any(isinstance(m, ToolMessage) for m in state["messages"])
        prompt = order_prompt if looked_up else system_prompt
        head = [SystemMessage(prompt)] if prompt else []
        return {"messages": [shown(model.invoke([*head, *state["messages"]]))]}

    def after_route(state: MessagesState) -> str:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else "answer"

    graph = StateGraph(MessagesState)
    graph.add_node("route", route)
    graph.add_node("tools", ToolNode([lookup_order]))
    graph.add_node("answer", answer)
    graph.add_edge(START, "route")
    graph.add_conditional_edges("route", after_route, ["tools", "answer"])
    graph.add_edge("tools", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=InMemorySaver())


def shown(reply: BaseMessage) -> AIMessage:
    """The reply as the customer sees it: its text only, and never tool markup.

    The answer step offers no tools, so a tool call there is dropped; a reply with markup in its
    text (a chat model that does not check its output) or one the chat model gave up on
    (``invalid_output``) becomes :data:`FALLBACK_REPLY`, with the reason kept in the metadata.
    """
    text = str(reply.content).strip()
    metadata = dict(reply.response_metadata)
    if has_markup(text) or "invalid_output" in metadata or not text:
        metadata.setdefault("invalid_output", {"errors": ["tool markup or no text in the answer"],
                                               "last_output": text[:500]})
        text = FALLBACK_REPLY
    return AIMessage(text, response_metadata=metadata, usage_metadata=getattr(reply, "usage_metadata", None),
                     id=reply.id)


def grounded(question: str, reply: BaseMessage) -> bool:
    """The automatic check: does the answer use the looked-up order status?

    A reply the chat model gave up on (``invalid_output``) or one with tool
    markup in it never counts, whatever words it contains.
    """
    answer = str(reply.content)
    if has_markup(answer) or "invalid_output" in reply.response_metadata:
        return False
    order = ORDER_ID.search(question)
    expected = ORDERS.get(order.group(1), "") if order else ""
    key_words = re.findall(r"[a-z]{5,}", expected.lower())
    return any(w in answer.lower() for w in key_words)


@dataclass(frozen=True)
class Turn:
    """One customer conversation as the agent ran it and as it was logged."""

    question: str
    tool_calls: list[tuple[str, dict[str, Any]]]
    tool_results: list[str]
    answer: str
    episode_id: str
    outcome: str

    @property
    def resolved(self) -> bool:
        return self.outcome == "resolved"


def run_helpdesk(model: Any, store: ExperienceStore, questions: Sequence[str] = QUESTIONS,
                 on_turn: Callable[[Turn], Any] | None = None) -> list[Turn]:
    """Run one conversation per question, log each as an episode with automatic feedback.

    ``on_turn`` sees each turn as soon as it is logged (to print progress).
    """
    agent = build_agent(model)
    capture = SleepCallbackHandler(AGENT, url=store.url, settings=store.settings)
    turns = []
    for i, question in enumerate(questions):
        run_id = uuid.uuid4()  # the episode id; kept to attach feedback below
        config = {"callbacks": [capture], "run_id": run_id, "configurable": {"thread_id": f"customer-{i}"}}
        messages = agent.invoke({"messages": [("user", question)]}, config=config)["messages"]
        episode = capture.episode_id_for(run_id)
        capture.flush()
        ok = grounded(question, messages[-1])
        store.add_feedback(episode, score=1.0 if ok else 0.0, label="grounded" if ok else "ungrounded",
                           source="automatic")
        store.record_outcome(episode, "resolved" if ok else "needs_review")
        turns.append(Turn(
            question=question,
            tool_calls=[(c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls],
            tool_results=[str(m.content) for m in messages if isinstance(m, ToolMessage)],
            answer=str(messages[-1].content),
            episode_id=episode,
            outcome="resolved" if ok else "needs_review",
        ))
        if on_turn is not None:
            on_turn(turns[-1])
    return turns


def format_turn(turn: Turn) -> str:
    """A turn as a person reads it: question, tool calls, answer, what was logged."""
    lines = [f"customer   {turn.question}"]
    for name, args in turn.tool_calls:
        lines.append(f"tool call  {name}({', '.join(f'{k}={json.dumps(v)}' for k, v in args.items())})")
    lines += [f"  result   {result}" for result in turn.tool_results]
    lines.append(f"agent      {turn.answer.strip()}")
    check = "the answer uses the looked-up status" if turn.resolved else "the answer misses the looked-up status"
    lines.append(f"logged     episode {turn.episode_id}: {turn.outcome} ({check})")
    return "\n".join(lines)


def main(model: Any = None, store: ExperienceStore | None = None, questions: Sequence[str] = QUESTIONS,
         echo: Callable[[str], Any] = print) -> list[Turn]:
    """Run the helpdesk on the default local model (or ``model``) and print what happened."""
    from agent_sleep.runtime.chat_model import ChatLocalModel

    store = store or ExperienceStore()
    model = model or ChatLocalModel(max_new_tokens=48)
    echo(f"Helpdesk agent (LangGraph) on {getattr(model, 'model', type(model).__name__)}, logging to "
         f"{store.safe_url}.\nOrder lookups are routed by a rule; the model writes every answer.\n")
    turns = run_helpdesk(model, store, questions, on_turn=lambda turn: echo(format_turn(turn) + "\n"))
    resolved = sum(t.resolved for t in turns)
    echo(f"logged {len(turns)} episodes to {store.safe_url} ({resolved} resolved, "
         f"{len(turns) - resolved} need review)")
    return turns
