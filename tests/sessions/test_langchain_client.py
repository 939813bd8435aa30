"""LangChain's ChatOpenAI against the gateway, as an agent framework uses it: plain and streamed replies,
client tools bound with bind_tools and answered with ToolMessages, structured output."""

import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import assert_whole_deltas


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def chat_model(live: str, bundle, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="assistant", base_url=f"{live}/v1", api_key=bundle.api_key, max_retries=0,
                      timeout=60, **kwargs)


def test_invoke_and_stream(live, tenant):
    model = chat_model(live, tenant)
    reply = model.invoke([SystemMessage("Be brief."), HumanMessage("hello from langchain")])
    assert reply.content == "Echo: hello from langchain"
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] > 0

    pieces = [chunk.content for chunk in model.stream("one two three [[delay_ms=20]]")]
    assert_whole_deltas([p for p in pieces if p], ["Echo: ", "one ", "two ", "three"])


@pytest.mark.parametrize("streaming", [False, True])
def test_bound_tool_round_trip(live, tenant, streaming):
    model = chat_model(live, tenant, streaming=streaming).bind_tools([get_weather])
    messages = [HumanMessage('Weather? [[tool=get_weather:{"city":"Bergen"}]]')]
    asked = model.invoke(messages)
    [call] = asked.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Bergen"}

    messages += [asked, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = model.invoke(messages)
    assert answer.content == "Tool results: sunny in Bergen"
    assert not answer.tool_calls


class Forecast(BaseModel):
    city: str
    celsius: int


def test_structured_output_with_a_schema(live, tenant):
    structured = chat_model(live, tenant).with_structured_output(Forecast, method="json_schema")
    forecast = structured.invoke('Forecast please [[reply={"city": "Oslo", "celsius": 4}]]')
    assert forecast == Forecast(city="Oslo", celsius=4)
