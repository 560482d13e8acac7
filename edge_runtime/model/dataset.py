"""Synthetic GLM-4 conversations for the edge assistant: seeded, English and Chinese, with splits.

Each sample is a whole exchange in the GLM-4 chat format: the user's request, the assistant's tool
call (``{name}\\n{json}``), the observation, and an answer that uses the observation's values; or
a clarification question and its answer; or a refusal. Held-out splits keep templates, slot values
(cities, rooms, devices never seen in training) and hand-written paraphrases apart, so an
evaluation measures what a model learned rather than what it memorised.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

Language = Literal["en", "zh"]
Split = Literal["train", "heldout_template", "heldout_value", "paraphrase"]
SPLITS: tuple[Split, ...] = ("train", "heldout_template", "heldout_value", "paraphrase")
CATEGORIES = (
    "weather",
    "sensor",
    "device_state",
    "command",
    "note",
    "multi",
    "clarify",
    "refuse",
)
DATES = {
    "today": {"en": "today", "zh": "今天"},
    "tomorrow": {"en": "tomorrow", "zh": "明天"},
    "day_after_tomorrow": {"en": "the day after tomorrow", "zh": "后天"},
}
CONDITIONS = [
    ("sunny", "晴"),
    ("partly cloudy", "多云"),
    ("overcast", "阴"),
    ("light rain", "小雨"),
    ("showers", "阵雨"),
    ("snow", "小雪"),
    ("fog", "雾"),
    ("thunderstorms", "雷阵雨"),
]


def tool_schemas() -> list[dict[str, Any]]:
    """The tools the assistant is trained on, as GLM-4 lists them in its system block."""

    def string(description: str, grounded: bool = False) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "string", "description": description, "maxLength": 64}
        if grounded:
            spec["x-grounded"] = True
        return spec

    def tool(
        name: str, description: str, props: dict[str, Any], required: list[str]
    ) -> dict[str, Any]:
        return {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            },
        }

    sensors = [s["id"] for s in vocabulary()["sensors"]]
    return [
        tool(
            "weather",
            "Weather forecast for a city",
            {
                "city": string("city name, as the user wrote it", grounded=True),
                "date": {"enum": list(DATES), "default": "today"},
            },
            ["city"],
        ),
        tool(
            "sensor_reading",
            "Latest reading of a sensor in a room",
            {
                "area": string("room, as the user wrote it", grounded=True),
                "sensor": {"enum": sensors},
            },
            ["area", "sensor"],
        ),
        tool(
            "device_state",
            "Whether a device is on or off",
            {
                "name": string("device, as the user wrote it", grounded=True),
            },
            ["name"],
        ),
        tool(
            "set_device",
            "Turn a device on or off",
            {
                "name": string("device, as the user wrote it", grounded=True),
                "state": {"enum": ["on", "off"]},
            },
            ["name", "state"],
        ),
        tool(
            "add_note",
            "Keep a note for the user",
            {
                "text": string("the note, in the user's words", grounded=True),
            },
            ["text"],
        ),
    ]


def home_names() -> dict[str, dict[str, list[str]]]:
    """The rooms and devices of the home the tools serve, for grounded decoding.

    As the daemon knows its areas (config) and devices (config and registry): tool -> grounded
    argument -> every name, in both languages. Cities are not listed: any city may be asked.
    """
    vocab = vocabulary()
    areas = [a[lang] for a in vocab["areas"] for lang in ("en", "zh")]
    devices = [d[lang] for d in vocab["devices"] for lang in ("en", "zh")]
    return {
        "sensor_reading": {"area": areas},
        "device_state": {"name": devices},
        "set_device": {"name": devices},
    }


@cache
def vocabulary() -> dict[str, Any]:
    """Cities, rooms, sensors and devices (``data/assistant.json``)."""
    path = resources.files("edge_runtime.model") / "data" / "assistant.json"
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


@dataclass(frozen=True)
class Sample:
    """One conversation and what a model should have done in it."""

    language: Language
    category: str
    split: Split
    messages: list[dict[str, Any]]
    # {"tool", "arguments"} of the first call; "values": what the answer must mention;
    # "clarify"/"refuse": the first assistant turn is a question or a refusal.
    expected: dict[str, Any] = field(default_factory=dict)
    # Its city, room and device are made-up words (see INVENTED_SHARE).
    invented: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The sample as a JSON line."""
        return asdict(self)


# Templates: (category, language) -> sentences. Each list's every fifth sentence is held out.
TEMPLATES: dict[tuple[str, str], list[str]] = {
    ("weather", "en"): [
        "what's the weather in {city} {date}",
        "how is the weather in {city} {date}",
        "weather for {city} {date}",
        "will it rain in {city} {date}",
        "tell me {date}'s weather in {city}",
        "check the weather in {city} for {date}",
        "what will the weather be like in {city} {date}",
        "forecast for {city} {date}",
        "is it going to be cold in {city} {date}",
        "give me the {city} weather {date}",
    ],
    ("weather", "zh"): [
        "{city}{date}天气怎么样",
        "查询{city}{date}的天气",
        "{date}{city}的天气如何",
        "{city}{date}会下雨吗",
        "帮我看看{city}{date}的天气",
        "{city}{date}冷不冷",
        "告诉我{date}{city}的天气",
        "{city}{date}的天气预报",
        "查一下{date}{city}天气",
        "{city}{date}适合出门吗",
    ],
    ("sensor", "en"): [
        "what's the {sensor} in the {area}",
        "how high is the {sensor} in the {area}",
        "read the {area} {sensor}",
        "tell me the {sensor} of the {area}",
        "check the {sensor} in the {area}",
        "what is the current {sensor} in the {area}",
        "{sensor} in the {area}?",
        "show me the {area} {sensor} reading",
        "is the {sensor} in the {area} ok",
        "give me the latest {sensor} from the {area}",
    ],
    ("sensor", "zh"): [
        "{area}的{sensor}是多少",
        "{area}现在的{sensor}",
        "查一下{area}的{sensor}",
        "告诉我{area}的{sensor}",
        "{area}{sensor}多少",
        "看看{area}的{sensor}",
        "{area}的{sensor}正常吗",
        "读取{area}的{sensor}",
        "{area}当前{sensor}是多少",
        "帮我查{area}的{sensor}",
    ],
    ("device_state", "en"): [
        "is the {device} on",
        "is the {device} still on",
        "did I leave the {device} on",
        "what's the state of the {device}",
        "check whether the {device} is on",
        "is the {device} off",
        "tell me if the {device} is running",
        "status of the {device}",
        "is the {device} working right now",
        "can you check the {device}",
    ],
    ("device_state", "zh"): [
        "{device}开着吗",
        "{device}关了吗",
        "{device}现在是什么状态",
        "帮我看看{device}开着没有",
        "{device}还在运行吗",
        "查一下{device}的状态",
        "我是不是忘了关{device}",
        "{device}是开着的吗",
        "告诉我{device}的状态",
        "{device}在工作吗",
    ],
    ("command", "en"): [
        "turn {state} the {device}",
        "switch {state} the {device}",
        "please turn the {device} {state}",
        "can you switch the {device} {state}",
        "set the {device} {state}",
        "{device} {state} please",
        "I want the {device} {state}",
        "put the {device} {state}",
        "turn the {device} {state} now",
        "make sure the {device} is {state}",
    ],
    ("command", "zh"): [
        "{state}{device}",
        "帮我{state}{device}",
        "请{state}{device}",
        "把{device}{state}",
        "麻烦{state}{device}",
        "现在{state}{device}",
        "给我{state}{device}",
        "{state}一下{device}",
        "我想{state}{device}",
        "快{state}{device}",
    ],
    ("note", "en"): [
        "remember that {note}",
        "note that {note}",
        "take a note: {note}",
        "save a note: {note}",
        "please remember {note}",
        "write down that {note}",
        "keep in mind that {note}",
        "make a note that {note}",
        "add a note: {note}",
        "jot down: {note}",
    ],
    ("note", "zh"): [
        "记住{note}",
        "记一下：{note}",
        "帮我记下{note}",
        "记录一下：{note}",
        "请记住{note}",
        "备忘：{note}",
        "帮我记住：{note}",
        "写个笔记：{note}",
        "记下来：{note}",
        "添加笔记：{note}",
    ],
    ("multi", "en"): [
        "check {date}'s weather in {city} and write a reminder",
        "query {date}'s weather in {city} and write a reminder",
        "look up the weather in {city} {date} and draft a reminder for me",
        "what's the weather in {city} {date}? then write me a reminder",
        "get {city}'s weather for {date} and compose a short reminder",
        "find out the weather in {city} {date} and remind me what to bring",
    ],
    ("multi", "zh"): [
        "查询{city}{date}的天气并生成一段提醒文案",
        "看看{city}{date}的天气，然后写个提醒",
        "查一下{date}{city}的天气并帮我写一条提醒",
        "{city}{date}天气怎么样？顺便生成提醒",
        "帮我查{city}{date}的天气，再写一段提醒",
        "查询{date}{city}天气并提醒我要带什么",
    ],
    ("clarify", "en"): [
        "what's the weather {date}",
        "will it rain {date}",
        "how is the weather {date}",
        "check the weather for {date}",
        "weather forecast {date}",
    ],
    ("clarify", "zh"): [
        "{date}天气怎么样",
        "{date}会下雨吗",
        "查询{date}的天气",
        "{date}的天气预报",
        "看看{date}的天气",
    ],
}
# Phrasings training has beyond TEMPLATES, never held out: eight sentences per request kind teach
# a small model those eight sentences, and a held-out phrasing is then refused or sent to the
# wrong tool. None contains a held-out template or produces a paraphrase (tests check both).
TRAIN_TEMPLATES: dict[tuple[str, str], list[str]] = {
    ("weather", "en"): [
        "weather in {city} {date}?",
        "{city} weather {date}",
        "what's {city}'s forecast for {date}",
        "{date} in {city}: what's the weather",
        "any rain in {city} {date}",
        "how hot will it get in {city} {date}",
        "what's the forecast for {date} in {city}",
        "I'm going to {city} {date}, what's the weather there",
        "what's the weather going to do in {city} {date}",
        "look up {city}'s weather for {date}",
        "is {date} a nice day in {city}",
        "what is the temperature in {city} {date}",
    ],
    ("weather", "zh"): [
        "{city}{date}的天气",
        "{date}{city}天气预报",
        "{city}{date}气温多少",
        "{date}去{city}，天气怎么样",
        "{city}那边{date}天气好吗",
        "我想知道{city}{date}的天气",
        "{date}{city}下不下雨",
        "{city}{date}热吗",
        "问一下{city}{date}天气",
        "{date}{city}是晴天吗",
        "查查{city}的天气，{date}的",
        "{city}{date}有雨吗",
    ],
    ("sensor", "en"): [
        "{area} {sensor}?",
        "what does the {area} sensor say about the {sensor}",
        "I'd like the {sensor} in the {area}",
        "how much {sensor} is there in the {area}",
        "report the {sensor} for the {area}",
        "look at the {sensor} in the {area}",
        "get me the {area}'s {sensor}",
        "current {sensor}, {area}",
    ],
    ("sensor", "zh"): [
        "{area}{sensor}",
        "{area}里{sensor}怎么样",
        "我想看{area}的{sensor}",
        "{area}的{sensor}高不高",
        "{area}现在{sensor}多少",
        "报一下{area}的{sensor}",
        "{area}那边的{sensor}",
        "看下{area}{sensor}",
    ],
    ("device_state", "en"): [
        "is the {device} running",
        "is the {device} turned on",
        "{device} status?",
        "is the {device} on or off",
        "what's the {device} doing",
        "have I switched off the {device}",
        "look at the {device} for me",
        "the {device}, is it on",
        "did somebody leave the {device} running",
        "what state is the {device} in",
        "is the {device} switched off",
        "check on the {device}",
    ],
    ("device_state", "zh"): [
        "{device}开了没",
        "{device}是什么状态",
        "{device}还开着吗",
        "{device}现在开着还是关着",
        "看一下{device}",
        "{device}有没有关",
        "{device}运行着吗",
        "{device}关掉了没有",
        "检查一下{device}",
        "{device}现在怎么样",
        "{device}是不是开着",
        "{device}在运转吗",
    ],
    ("command", "en"): [
        "{verb} the {device}",
        "please {verb} the {device}",
        "{verb} the {device} for me",
        "I need you to {verb} the {device}",
        "go ahead and {verb} the {device}",
        "{verb} the {device} right away",
        "time to {verb} the {device}",
        "the {device}: {verb} it",
        "get the {device} {state}",
        "I'd like the {device} {state}",
        "have the {device} {state}",
        "{device} should be {state} now",
    ],
    ("command", "zh"): [
        "{device}{state}",
        "把{device}{state}吧",
        "帮忙{state}{device}",
        "{state}{device}，谢谢",
        "请把{device}{state}",
        "可以{state}{device}吗",
        "马上{state}{device}",
        "你去{state}{device}",
    ],
    ("note", "en"): [
        "don't forget that {note}",
        "put down a note: {note}",
        "store this: {note}",
        "note: {note}",
        "remember this: {note}",
        "I want you to remember that {note}",
    ],
    ("note", "zh"): [
        "记着：{note}",
        "帮我记一下{note}",
        "存个笔记：{note}",
        "请帮我记录{note}",
        "笔记：{note}",
        "你记一下，{note}",
    ],
    ("multi", "en"): [
        "weather in {city} {date}, and a reminder please",
        "check {city} for {date} and remind me what to wear",
        "{date} in {city}: the weather, then a reminder",
        "{city} {date}: weather plus a reminder",
    ],
    ("multi", "zh"): [
        "{city}{date}天气如何，写个提醒给我",
        "查{date}{city}的天气，再提醒我带什么",
        "{date}{city}的天气，顺便写一条提醒",
        "帮我看{city}{date}天气并写提醒",
    ],
    ("clarify", "en"): [
        "weather {date}?",
        "any rain {date}",
        "what's the forecast for {date}",
        "is it going to be sunny {date}",
    ],
    ("clarify", "zh"): [
        "{date}天气",
        "{date}下雨吗",
        "{date}天气好吗",
        "{date}热不热",
    ],
}
# Training asks for a reading by what it means as well as by the sensor's name: "how warm is
# it" is the temperature. (template, sensor id); training only.
SENSOR_QUESTIONS: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("how warm is the {area}", "temperature"),
        ("how cold is it in the {area}", "temperature"),
        ("is the {area} hot", "temperature"),
        ("how humid is the {area}", "humidity"),
        ("is the air dry in the {area}", "humidity"),
        ("how loud is the {area}", "noise"),
        ("is the {area} quiet", "noise"),
        ("is the {area} dark", "light"),
        ("how much light is in the {area}", "light"),
        ("is the air stale in the {area}", "co2"),
        ("how dusty is the air in the {area}", "pm25"),
        ("is the {area} air polluted", "pm25"),
        ("what is the barometer reading in the {area}", "pressure"),
        ("how much water is running in the {area}", "water_flow"),
    ],
    "zh": [
        ("{area}热不热", "temperature"),
        ("{area}冷吗", "temperature"),
        ("{area}多少度", "temperature"),
        ("{area}潮不潮", "humidity"),
        ("{area}干燥吗", "humidity"),
        ("{area}吵吗", "noise"),
        ("{area}安静吗", "noise"),
        ("{area}暗不暗", "light"),
        ("{area}光线怎么样", "light"),
        ("{area}空气闷吗", "co2"),
        ("{area}空气脏不脏", "pm25"),
        ("{area}雾霾严重吗", "pm25"),
        ("{area}气压高吗", "pressure"),
        ("{area}用水多不多", "water_flow"),
    ],
}
# Other names training calls a sensor by; the vocabulary's name stays the answer's.
SENSOR_ALIASES: dict[str, dict[str, list[str]]] = {
    "temperature": {"en": ["temp"], "zh": ["气温", "室温"]},
    "humidity": {"en": ["humidity level", "moisture"], "zh": ["湿度值"]},
    "co2": {"en": ["CO2", "carbon dioxide"], "zh": ["二氧化碳", "CO2"]},
    "light": {"en": ["brightness", "light"], "zh": ["亮度", "光照"]},
    "noise": {"en": ["noise", "sound level"], "zh": ["噪声", "噪音水平"]},
    "pm25": {"en": ["fine dust", "particulate level"], "zh": ["细颗粒物", "PM2.5浓度"]},
    "pressure": {"en": ["pressure", "barometric pressure"], "zh": ["大气压", "气压值"]},
    "water_flow": {"en": ["flow rate", "water usage"], "zh": ["水流", "用水量"]},
}
# Verbs that turn a device on or off; English training templates with {verb} use them, and
# Chinese training varies its {state} word the same way.
COMMAND_VERBS: dict[str, dict[str, list[str]]] = {
    "en": {
        "on": ["turn on", "switch on", "start", "power on", "start up"],
        "off": ["turn off", "switch off", "stop", "power off", "shut off", "shut down"],
    },
    "zh": {"on": ["打开", "开启", "启动", "开"], "off": ["关闭", "关掉", "关上", "停掉"]},
}
# Openings and endings training wraps requests in, in-domain and refused alike, so that neither
# tells a kind of request from another.
WRAPPERS: dict[str, tuple[list[str], list[str]]] = {
    "en": (
        ["please ", "hey, ", "hi! ", "quick question: ", "I'd like to know: ", "ok, ", "um, "],
        [" please", ", thanks", "?", " thank you", "!", " right now"],
    ),
    "zh": (
        ["请问", "你好，", "嗨，", "麻烦你，", "我问一下，", "那个，"],
        ["？", "，谢谢", "呀", "吧", "！", "，快点"],
    ),
}
WRAPPED_SHARE = 0.4


REFUSALS: dict[str, list[str]] = {
    "en": [
        "write a poem about the sea",
        "who won the world cup in 2010",
        "translate hello into French",
        "tell me a joke about cats",
        "what is the capital of Peru",
        "help me with my homework",
        "book a flight to Paris",
        "what's the meaning of life",
        "summarize this novel for me",
        "recommend a good movie",
        "how do I cook pasta",
        "what is 17 times 23",
    ],
    "zh": [
        "写一首关于大海的诗",
        "2010年世界杯冠军是谁",
        "把你好翻译成法语",
        "讲个关于猫的笑话",
        "秘鲁的首都是哪里",
        "帮我写作业",
        "帮我订一张去巴黎的机票",
        "人生的意义是什么",
        "帮我总结这本小说",
        "推荐一部好电影",
        "怎么煮意大利面",
        "17乘以23等于多少",
    ],
}
# Training's out-of-domain requests beyond REFUSALS, composed from a pattern and its fillers, so
# that refusing is learned as a category, not as a dozen sentences. None touches a topic of the
# paraphrases' refusals (food orders, history, emails, nutrition, music, physics).
OFF_TOPIC: dict[str, list[tuple[str, list[str]]]] = {
    "en": [
        ("write a {} about {}", ["poem", "story", "song", "haiku", "limerick"]),
        ("tell me a joke about {}", ["dogs", "teachers", "penguins", "lawyers", "bananas"]),
        ("what is the capital of {}", ["Canada", "Kenya", "Norway", "Chile", "Vietnam", "Egypt"]),
        ("translate {} into {}", ["good morning", "thank you", "see you tomorrow", "goodbye"]),
        ("how do I {}", ["bake bread", "tie a tie", "change a tire", "learn chess", "knit"]),
        ("recommend a good {}", ["book", "podcast", "restaurant", "video game", "TV show"]),
        ("what is {} times {}", []),
        ("help me with my {}", ["essay", "taxes", "resume", "math test", "science project"]),
        ("who wrote {}", ["Hamlet", "Don Quixote", "War and Peace", "The Odyssey"]),
        ("what is the {} in the world", ["tallest mountain", "longest river", "biggest desert"]),
        ("book {} for {}", ["a hotel", "a table", "a taxi", "a train ticket"]),
        ("give me advice on {}", ["dating", "investing", "running a marathon", "public speaking"]),
        ("summarize {} for me", ["this article", "the news", "this movie", "the report"]),
        (
            "can you {}",
            ["write a python script", "fix my code", "explain blockchain", "do my taxes"],
        ),
        ("could you {}", ["find me a cheap laptop", "tell me a riddle", "name a good wine"]),
        ("I want you to {}", ["plan my holiday", "pick a name for my dog", "grade my essay"]),
        ("what does {} mean", ["serendipity", "carpe diem", "API", "inflation", "karma"]),
        ("who is {}", ["the richest person", "the best footballer", "the president of France"]),
        ("how much does {} cost", ["a new car", "a flight to Rome", "an iPhone", "a wedding"]),
        ("which {} should I buy", ["phone", "bike", "tablet", "laptop", "sofa"]),
        ("what's the score of {}", ["the football game", "last night's match", "the final"]),
        ("teach me {}", ["Spanish", "to juggle", "to draw", "to play poker", "some magic"]),
        ("is {} a good idea", ["buying bitcoin", "a tattoo", "quitting my job", "moving abroad"]),
        (
            "tell me about {}",
            ["the Roman empire", "black holes", "Shakespeare", "the stock market"],
        ),
        ("please {}", ["find a plumber near me", "solve this riddle", "rate my selfie"]),
        ("how do you say {} in {}", ["cat", "thank you", "good night", "how are you"]),
    ],
    "zh": [
        ("写一首关于{}的{}", ["秋天", "月亮", "友谊", "咖啡", "冬天"]),
        ("讲个关于{}的笑话", ["狗", "老师", "企鹅", "律师", "香蕉"]),
        ("{}的首都是哪里", ["加拿大", "肯尼亚", "挪威", "智利", "越南", "埃及"]),
        ("把{}翻译成{}", ["早上好", "谢谢", "明天见", "再见"]),
        ("怎么{}", ["烤面包", "打领带", "换轮胎", "学下棋", "织毛衣"]),
        ("推荐一{}", ["本好书", "个播客", "家餐厅", "款游戏", "部电视剧"]),
        ("{}乘以{}等于多少", []),
        ("帮我改一下我的{}", ["作文", "简历", "报税表", "数学作业", "科学报告"]),
        ("{}是谁写的", ["哈姆雷特", "堂吉诃德", "战争与和平", "奥德赛"]),
        ("世界上{}是哪个", ["最高的山", "最长的河", "最大的沙漠"]),
        ("帮我订{}，{}", ["一间酒店", "一张桌子", "一辆出租车", "一张火车票"]),
        ("给我一些{}的建议", ["约会", "投资", "跑马拉松", "演讲"]),
        ("帮我总结一下{}", ["这篇文章", "今天的新闻", "这部电影", "这份报告"]),
        ("你能{}吗", ["写一段Python代码", "帮我改代码", "解释一下区块链", "帮我报税"]),
        ("可以帮我{}吗", ["找一台便宜的电脑", "出个谜语", "推荐一瓶红酒"]),
        ("我想让你{}", ["帮我规划假期", "给我的狗起个名字", "给我的作文打分"]),
        ("{}是什么意思", ["内卷", "躺平", "通货膨胀", "区块链", "因果报应"]),
        ("{}是谁", ["世界首富", "最好的足球运动员", "法国总统"]),
        ("{}要多少钱", ["买一辆新车", "去罗马的机票", "一部苹果手机", "办一场婚礼"]),
        ("我该买哪款{}", ["手机", "自行车", "平板", "笔记本电脑", "沙发"]),
        ("{}比分多少", ["昨晚的球赛", "这场足球比赛", "总决赛"]),
        ("教我{}", ["西班牙语", "玩杂耍", "画画", "打扑克", "变魔术"]),
        ("{}是个好主意吗", ["买比特币", "纹身", "辞职", "出国定居"]),
        ("给我讲讲{}", ["罗马帝国", "黑洞", "莎士比亚", "股市"]),
        ("请{}", ["帮我找个附近的水管工", "解这个谜语", "给我的自拍打分"]),
        ("{}用{}怎么说", ["猫", "谢谢", "晚安", "你好吗"]),
    ],
}
_OFF_TOPIC_EXTRA = {
    "en": {
        "write a {} about {}": ["the sea", "autumn", "my cat", "a dragon", "the city at night"],
        "translate {} into {}": ["French", "German", "Spanish", "Japanese", "Italian"],
        "book {} for {}": ["tonight", "next Friday", "two people", "the weekend"],
        "how do you say {} in {}": ["French", "German", "Korean", "Russian"],
    },
    "zh": {
        "写一首关于{}的{}": ["诗", "歌", "短篇故事", "童谣"],
        "把{}翻译成{}": ["法语", "德语", "西班牙语", "日语", "意大利语"],
        "帮我订{}，{}": ["今天晚上", "下周五", "两个人", "这个周末"],
        "{}用{}怎么说": ["法语", "德语", "韩语", "俄语"],
    },
}


def off_topic(rng: random.Random, language: str) -> str:
    """An out-of-domain request composed from OFF_TOPIC."""
    pattern, fillers = rng.choice(OFF_TOPIC[language])
    if not fillers:  # arithmetic
        return pattern.format(rng.randint(3, 99), rng.randint(3, 99))
    first = rng.choice(fillers)
    if pattern.count("{}") == 1:
        return pattern.format(first)
    return pattern.format(first, rng.choice(_OFF_TOPIC_EXTRA[language][pattern]))


NOTES: dict[str, list[str]] = {
    "en": [
        "the wifi password is tulip42",
        "the car is on level B2",
        "mom's birthday is on May 3",
        "the plumber comes on Friday",
        "the spare key is under the mat",
        "buy milk and eggs",
        "the gate code is 4711",
        "water the plants on Sunday",
        "the meeting moved to 3 pm",
        "the filter was changed in March",
    ],
    "zh": [
        "无线密码是tulip42",
        "车停在B2层",
        "妈妈的生日是5月3日",
        "水管工周五来",
        "备用钥匙在门垫下",
        "买牛奶和鸡蛋",
        "大门密码是4711",
        "周日给植物浇水",
        "会议改到下午三点",
        "三月换过滤网",
    ],
}
ANSWERS: dict[tuple[str, str], str] = {
    ("weather", "en"): "{city} {date}: {condition}, {low} to {high} °C, {rain}% chance of rain.",
    ("weather", "zh"): "{city}{date}：{condition}，{low}～{high}°C，降水概率{rain}%。",
    ("sensor", "en"): "The {sensor} in the {area} is {value} {unit}.",
    ("sensor", "zh"): "{area}的{sensor}是{value}{unit}。",
    ("device_state", "en"): "The {device} is {state}.",
    ("device_state", "zh"): "{device}现在是{state}的。",
    ("command", "en"): "Done: the {device} is now {state}.",
    ("command", "zh"): "好的，{device}已{state}。",
    ("note", "en"): "Noted: {note}.",
    ("note", "zh"): "已记下：{note}。",
    (
        "remind",
        "en",
    ): "Reminder: {date} in {city} it will be {condition}, {low} to {high} °C{advice}.",
    ("remind", "zh"): "提醒：{city}{date}{condition}，{low}～{high}°C{advice}。",
    ("ask_city", "en"): "Which city's weather do you want?",
    ("ask_city", "zh"): "请问要查询哪个城市的天气？",
    ("refuse", "en"): "Sorry, I can only help with the devices, sensors, weather, reminders and "
    "notes of this home.",
    ("refuse", "zh"): "抱歉，我只能帮您处理家里的设备、传感器、天气、提醒和笔记。",
}
PARAPHRASES: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    # Hand-written requests no template produces: (text, category, slot values).
    "en": [
        (
            "Do I need an umbrella in Berlin tomorrow?",
            "weather",
            {"city": "Berlin", "date": "tomorrow"},
        ),
        (
            "Hey, what's it like outside in Tokyo today",
            "weather",
            {"city": "Tokyo", "date": "today"},
        ),
        (
            "Any idea how warm the kitchen is right now?",
            "sensor",
            {"area": "kitchen", "sensor": "temperature"},
        ),
        (
            "I wonder what the humidity in the bedroom is",
            "sensor",
            {"area": "bedroom", "sensor": "humidity"},
        ),
        ("Did somebody forget to switch off the fan?", "device_state", {"device": "fan"}),
        ("Kill the heater, it's too hot", "command", {"device": "heater", "state": "off"}),
        ("Could you get the speaker going", "command", {"device": "speaker", "state": "on"}),
        ("Don't let me forget: the gate code is 4711", "note", {"note": "the gate code is 4711"}),
        (
            "Should I pack a coat for Tokyo the day after tomorrow?",
            "weather",
            {"city": "Tokyo", "date": "day_after_tomorrow"},
        ),
        ("Berlin forecast please, for today", "weather", {"city": "Berlin", "date": "today"}),
        (
            "Is it going to be sunny in Berlin the day after tomorrow?",
            "weather",
            {"city": "Berlin", "date": "day_after_tomorrow"},
        ),
        (
            "How stuffy is the bedroom? Give me the CO2",
            "sensor",
            {"area": "bedroom", "sensor": "co2"},
        ),
        (
            "Is it noisy in the kitchen at the moment?",
            "sensor",
            {"area": "kitchen", "sensor": "noise"},
        ),
        (
            "What's the air pressure reading from the bedroom?",
            "sensor",
            {"area": "bedroom", "sensor": "pressure"},
        ),
        ("How bright is it in the kitchen?", "sensor", {"area": "kitchen", "sensor": "light"}),
        ("Is the speaker still playing?", "device_state", {"device": "speaker"}),
        ("Is the heater doing anything right now?", "device_state", {"device": "heater"}),
        ("Switch the fan back on, would you", "command", {"device": "fan", "state": "on"}),
        ("Please shut the speaker up", "command", {"device": "speaker", "state": "off"}),
        (
            "Jot this down for me: the plumber comes on Friday",
            "note",
            {"note": "the plumber comes on Friday"},
        ),
        (
            "Tokyo tomorrow: what's the weather, and draft me a reminder",
            "multi",
            {"city": "Tokyo", "date": "tomorrow"},
        ),
        # Out-of-domain requests, none of them a training refusal.
        ("can you order me a pizza", "refuse", {}),
        ("what year did the Berlin wall fall", "refuse", {}),
        ("write an email to my boss saying I'm sick", "refuse", {}),
        ("how many calories are in an apple", "refuse", {}),
        ("play some jazz on spotify", "refuse", {}),
        ("explain quantum computing simply", "refuse", {}),
    ],
    "zh": [
        ("明天去柏林要带伞吗", "weather", {"city": "柏林", "date": "tomorrow"}),
        ("今天东京外面怎么样", "weather", {"city": "东京", "date": "today"}),
        ("厨房现在热不热，温度多少", "sensor", {"area": "厨房", "sensor": "temperature"}),
        ("卧室湿度高吗", "sensor", {"area": "卧室", "sensor": "humidity"}),
        ("风扇是不是还没关", "device_state", {"device": "风扇"}),
        ("太热了，把暖气关掉", "command", {"device": "暖气", "state": "off"}),
        ("让音箱响起来", "command", {"device": "音箱", "state": "on"}),
        ("别让我忘了：大门密码是4711", "note", {"note": "大门密码是4711"}),
        ("后天去东京要不要穿外套", "weather", {"city": "东京", "date": "day_after_tomorrow"}),
        ("柏林今天天气咋样", "weather", {"city": "柏林", "date": "today"}),
        ("后天柏林会出太阳吗", "weather", {"city": "柏林", "date": "day_after_tomorrow"}),
        ("卧室里闷不闷，二氧化碳多少", "sensor", {"area": "卧室", "sensor": "co2"}),
        ("厨房现在吵不吵", "sensor", {"area": "厨房", "sensor": "noise"}),
        ("卧室的气压读数是多少", "sensor", {"area": "卧室", "sensor": "pressure"}),
        ("厨房里亮不亮", "sensor", {"area": "厨房", "sensor": "light"}),
        ("音箱还在放吗", "device_state", {"device": "音箱"}),
        ("看一下暖气有没有在烧", "device_state", {"device": "暖气"}),
        ("把风扇重新打开吧", "command", {"device": "风扇", "state": "on"}),
        ("让音箱安静下来", "command", {"device": "音箱", "state": "off"}),
        ("顺手记个事：水管工周五来", "note", {"note": "水管工周五来"}),
        ("东京明天天气怎么样，顺便帮我写个提醒", "multi", {"city": "东京", "date": "tomorrow"}),
        ("帮我点一份披萨", "refuse", {}),
        ("柏林墙是哪一年倒的", "refuse", {}),
        ("帮我给老板写封请假邮件", "refuse", {}),
        ("一个苹果有多少卡路里", "refuse", {}),
        ("用网易云放点爵士乐", "refuse", {}),
        ("简单解释一下量子计算", "refuse", {}),
    ],
}


@dataclass
class _Values:
    """Slot values of one split: held-out values never appear in training."""

    cities: list[dict[str, str]]
    areas: list[dict[str, str]]
    devices: list[dict[str, str]]


def _partition(seed: int) -> tuple[_Values, _Values]:
    vocab = vocabulary()
    rng = random.Random(f"{seed}:values")
    cities, areas, devices = list(vocab["cities"]), list(vocab["areas"]), list(vocab["devices"])
    for items in (cities, areas, devices):
        rng.shuffle(items)
    # The paraphrases name a few values: keep those in training.
    keep_city = {"Berlin", "Tokyo"}
    keep_area = {"kitchen", "bedroom"}
    keep_device = {"fan", "heater", "speaker"}
    cities.sort(key=lambda c: c["en"] in keep_city, reverse=True)
    areas.sort(key=lambda a: a["en"] in keep_area, reverse=True)
    devices.sort(key=lambda d: d["en"] in keep_device, reverse=True)
    held = (len(cities) * 15 // 100, len(areas) * 20 // 100, 3)
    train = _Values(cities[: -held[0]], areas[: -held[1]], devices[: -held[2]])
    heldout = _Values(cities[-held[0] :], areas[-held[1] :], devices[-held[2] :])
    return train, heldout


# The share of training conversations whose city, room and device are invented words. A small
# model given only a few hundred real names learns them by heart and writes one it remembers; a
# name it has never seen, in a request it has to answer, teaches it to copy from the request.
INVENTED_SHARE = 0.5
_ONSETS = (*"bcdfghjklmnprstvwz", "br", "ch", "cl", "dr", "fl", "gr", "kr", "pl", "sh", "st", "th")
_VOWELS = (*"aeiou", *"aeio", "ai", "ea", "ia", "io", "ou", "y")
_CODAS = ["", "", "", "", "n", "r", "l", "s", "m", "th", "nd", "rk", "x", "ng"]
_ROOM_WORDS = ("room", "hall", "loft", "den", "wing", "corner", "shed", "suite")
_DEVICE_WORDS = ("lamp", "pump", "switch", "valve", "plug", "socket", "sensor", "blinds")
_ROOM_HAN = "室房厅间屋廊台库"
_DEVICE_HAN = "灯机器扇泵阀箱锁"


@dataclass(frozen=True)
class _Spelling:
    """The Han characters made-up names are spelled with, and those they must not use."""

    common: str  # the characters of the training split's names
    banned: frozenset[str]  # characters only held-out names have

    @classmethod
    def of(cls, train: _Values, heldout: _Values) -> _Spelling:
        def han(values: _Values) -> set[str]:
            names = [i["zh"] for i in (*values.cities, *values.areas, *values.devices)]
            return {c for name in names for c in name if "\u4e00" <= c <= "\u9fff"}

        seen = han(train)
        return cls("".join(sorted(seen)), frozenset(han(heldout) - seen))


def _invent(rng: random.Random, kind: str, language: Language, spelling: _Spelling) -> str:
    """A made-up name for ``kind`` ("city", "area" or "device") holding no name the data uses.

    Not even inside it, and no character that only held-out names have: a held-out name reaches
    training neither whole nor in pieces.
    """
    known = _known_names()
    while True:
        if language == "zh":
            name = _invented_han(rng, kind, spelling.common)
        else:
            name = _invented_latin(rng, kind)
        folded = name.casefold()
        if not any(k in folded for k in known) and spelling.banned.isdisjoint(name):
            return name


def _invented_latin(rng: random.Random, kind: str) -> str:
    def word() -> str:
        syllables = rng.randint(1, 3) if kind != "city" else rng.randint(2, 3)
        return "".join(
            rng.choice(_ONSETS) * (i == 0 or rng.random() < 0.8)
            + rng.choice(_VOWELS)
            + rng.choice(_CODAS)
            for i in range(syllables)
        )

    if kind == "city":
        words = 2 if rng.random() < 0.15 else 1
        return " ".join(word().capitalize() for _ in range(words))
    tail = _ROOM_WORDS if kind == "area" else _DEVICE_WORDS
    return word() + (" " + rng.choice(tail) if rng.random() < 0.4 else "")


def _invented_han(rng: random.Random, kind: str, common: str) -> str:
    # Half from characters training names use, half from all of CJK: most of those are bytes to
    # the tokenizer, and a model that copies them copies any name.
    letters = [
        rng.choice(common) if rng.random() < 0.5 else chr(rng.randint(0x4E00, 0x9FA5))
        for _ in range(_han_length(rng) if kind == "city" else rng.randint(1, 2))
    ]
    if kind != "city" and (len(letters) == 1 or rng.random() < 0.4):
        letters.append(rng.choice(_ROOM_HAN if kind == "area" else _DEVICE_HAN))
    return "".join(letters)


def _han_length(rng: random.Random) -> int:
    # As long as Chinese city names run (2 to 5 characters, most of them 2): a model that only
    # copies 2 and 3 stops after 3 in 布加勒斯特.
    return rng.choices((2, 3, 4, 5), weights=(45, 30, 15, 10))[0]


@cache
def _known_names() -> frozenset[str]:
    vocab = vocabulary()
    return frozenset(
        item[language].casefold()
        for kind in ("cities", "areas", "devices")
        for item in vocab[kind]
        for language in ("en", "zh")
    )


def _templates(category: str, language: str, split: Split) -> list[str]:
    found = TEMPLATES[(category, language)]
    held = [t for i, t in enumerate(found) if i % 5 == 4]
    if split == "heldout_template":
        return held or found[-1:]
    kept = [t for t in found if t not in held] or found
    if split == "train":
        return kept + TRAIN_TEMPLATES.get((category, language), [])
    return kept


def _wrapped(rng: random.Random, language: Language, text: str, *, end: bool = True) -> str:
    """``text`` after one of training's openings, or before one of its endings, or as it is."""
    openings, endings = WRAPPERS[language]
    draw = rng.random()
    if draw < WRAPPED_SHARE / 2:
        return rng.choice(openings) + text
    if draw < WRAPPED_SHARE and end:
        return text + rng.choice(endings)
    return text


def generate(
    split: Split, count: int, seed: int = 0, *, invented: float = INVENTED_SHARE
) -> list[Sample]:
    """``count`` samples of ``split`` (the paraphrases: each once), the same for the same seed.

    ``invented``: the share of training samples with made-up names.
    """
    rng = random.Random(f"{seed}:{split}")
    train_values, heldout_values = _partition(seed)
    values = heldout_values if split == "heldout_value" else train_values
    spelling = _Spelling.of(train_values, heldout_values)
    out: list[Sample] = []
    while len(out) < count:
        language: Language = "en" if len(out) % 2 == 0 else "zh"
        if split == "paraphrase":
            # Each hand-written request once: there are few, and repeats would weigh them.
            index = len(out) // 2
            if index >= len(PARAPHRASES[language]):
                break
            text, category, slots = PARAPHRASES[language][index]
            out.append(_from_slots(rng, language, category, split, text=text, slots=slots))
            continue
        category = CATEGORIES[(len(out) // 2) % len(CATEGORIES)]
        if split == "heldout_value" and category == "refuse":
            category = "weather"
        out.append(_sample(rng, language, category, split, values, invented=(invented, spelling)))
    return out


def _sample(
    rng: random.Random,
    language: Language,
    category: str,
    split: Split,
    values: _Values,
    *,
    invented: tuple[float, _Spelling],
) -> Sample:
    if category == "refuse":
        # Training also refuses composed requests; the template split keeps REFUSALS, and the
        # paraphrase split holds requests neither has.
        composed = split == "train" and rng.random() < 0.75
        text = off_topic(rng, language) if composed else rng.choice(REFUSALS[language])
        if split == "train":
            text = _wrapped(rng, language, text)
        return _from_slots(rng, language, category, split, text=text, slots={})
    template = rng.choice(_templates(category, language, split))
    city = rng.choice(values.cities)[language]
    area = rng.choice(values.areas)[language]
    device = rng.choice(values.devices)[language]
    share, spelling = invented
    made_up = split == "train" and rng.random() < share
    if made_up:
        city, area, device = (
            _invent(rng, kind, language, spelling) for kind in ("city", "area", "device")
        )
    date = rng.choice(list(DATES))
    sensors = vocabulary()["sensors"]
    sensor = rng.choice(sensors)
    state = rng.choice(["on", "off"])
    note = rng.choice(NOTES[language])
    words = {
        "city": city,
        "area": area,
        "device": device,
        "date": DATES[date][language],
        "sensor": sensor[language],
        "note": note,
        "state": state if language == "en" else {"on": "打开", "off": "关闭"}[state],
        "verb": COMMAND_VERBS[language][state][0],
    }
    if split == "train":
        # Training's other ways of saying the same: a sensor by another name or by what it
        # means, another verb for on and off.
        if category == "sensor" and rng.random() < 0.25:
            template, meant = rng.choice(SENSOR_QUESTIONS[language])
            sensor = next(s for s in sensors if s["id"] == meant)
        elif rng.random() < 0.4:
            words["sensor"] = rng.choice(SENSOR_ALIASES[sensor["id"]][language])
        words["verb"] = rng.choice(COMMAND_VERBS[language][state])
        if language == "zh":
            words["state"] = words["verb"]
    text = template.format(**words)
    if split == "train":
        # A note runs to the end of the request: nothing may follow it.
        text = _wrapped(rng, language, text, end=category != "note")
    slots = {
        "city": city,
        "date": date,
        "area": area,
        "sensor": sensor["id"],
        "device": device,
        "state": state,
        "note": note,
    }
    sample = _from_slots(rng, language, category, split, text=text, slots=slots)
    return replace(sample, invented=made_up)


def _from_slots(
    rng: random.Random,
    language: Language,
    category: str,
    split: Split,
    *,
    text: str,
    slots: Mapping[str, str],
) -> Sample:
    if category == "refuse":
        messages = [_user(text), _assistant(ANSWERS[("refuse", language)])]
        return Sample(language, category, split, messages, {"refuse": True})
    if category in ("weather", "multi", "clarify"):
        city, date = slots.get("city", ""), slots.get("date", "today")
        arguments = {"city": city, "date": date}
        observation = _forecast(rng, city, date, language)
        key = "remind" if category == "multi" else "weather"
        answer = ANSWERS[("weather", language)].format(**observation["words"])
        if category == "multi":
            answer = answer + "\n" + ANSWERS[(key, language)].format(**observation["words"])
        call = _call("weather", arguments)
        result = {"role": "tool", "content": json.dumps(observation["result"], ensure_ascii=False)}
        values = [str(observation["result"]["low_c"]), str(observation["result"]["high_c"])]
        if category == "clarify":
            messages = [
                _user(text),
                _assistant(ANSWERS[("ask_city", language)]),
                _user(city),
                call,
                result,
                _assistant(answer),
            ]
            expected = {
                "clarify": True,
                "tool": "weather",
                "arguments": arguments,
                "values": values,
            }
            return Sample(language, category, split, messages, expected)
        messages = [_user(text), call, result, _assistant(answer)]
        return Sample(
            language,
            category,
            split,
            messages,
            {"tool": "weather", "arguments": arguments, "values": values},
        )
    if category == "sensor":
        sensor = next(s for s in vocabulary()["sensors"] if s["id"] == slots["sensor"])
        value = round(rng.uniform(sensor["low"], sensor["high"]), sensor["digits"])
        if sensor["digits"] == 0:
            value = int(value)
        arguments = {"area": slots["area"], "sensor": sensor["id"]}
        # The observation the runtime gives: the arguments as the user said them, then the
        # reading (the unit goes with the sensor, so the answer writes it).
        result = {"area": slots["area"], "sensor": sensor["id"], "value": value}
        answer = ANSWERS[("sensor", language)].format(
            sensor=sensor[language], area=slots["area"], value=value, unit=sensor["unit"]
        )
        return _tool_sample(
            language,
            category,
            split,
            text=text,
            call=("sensor_reading", arguments),
            result=result,
            answer=answer,
            values=[str(value)],
        )
    if category == "device_state":
        on = rng.random() < 0.5
        state = ("on" if on else "off") if language == "en" else ("开着" if on else "关着")
        arguments = {"name": slots["device"]}
        answer = ANSWERS[("device_state", language)].format(device=slots["device"], state=state)
        return _tool_sample(
            language,
            category,
            split,
            text=text,
            call=("device_state", arguments),
            result={"name": slots["device"], "state": "on" if on else "off"},
            answer=answer,
            values=[],
        )
    if category == "command":
        arguments = {"name": slots["device"], "state": slots["state"]}
        state = (
            slots["state"] if language == "en" else {"on": "打开", "off": "关闭"}[slots["state"]]
        )
        answer = ANSWERS[("command", language)].format(device=slots["device"], state=state)
        return _tool_sample(
            language,
            category,
            split,
            text=text,
            call=("set_device", arguments),
            result={"name": slots["device"], "state": slots["state"], "ok": True},
            answer=answer,
            values=[],
        )
    if category == "note":
        arguments = {"text": slots["note"]}
        answer = ANSWERS[("note", language)].format(note=slots["note"])
        return _tool_sample(
            language,
            category,
            split,
            text=text,
            call=("add_note", arguments),
            result={"text": slots["note"], "saved": True},
            answer=answer,
            values=[],
        )
    raise ValueError(f"unknown category {category!r}")


def _tool_sample(
    language: Language,
    category: str,
    split: Split,
    *,
    text: str,
    call: tuple[str, dict[str, Any]],
    result: dict[str, Any],
    answer: str,
    values: list[str],
) -> Sample:
    tool, arguments = call
    messages = [
        _user(text),
        _call(tool, arguments),
        {"role": "tool", "content": json.dumps(result, ensure_ascii=False)},
        _assistant(answer),
    ]
    expected = {"tool": tool, "arguments": arguments, "values": values}
    return Sample(language, category, split, messages, expected)


def _forecast(rng: random.Random, city: str, date: str, language: str) -> dict[str, Any]:
    condition = rng.choice(CONDITIONS)
    low = rng.randint(-10, 25)
    high = low + rng.randint(2, 12)
    rain = rng.randint(0, 100)
    en, zh = condition
    result = {
        "city": city,
        "date": date,
        "condition": en,
        "low_c": low,
        "high_c": high,
        "precipitation": rain,
    }
    wet = en in ("light rain", "showers", "thunderstorms")
    advice = {
        "en": ", so take an umbrella" if wet else (", so dress warmly" if low < 5 else ""),
        "zh": "，记得带伞" if wet else ("，注意保暖" if low < 5 else ""),
    }[language]
    words = {
        "city": city,
        "date": DATES[date][language],
        "condition": en if language == "en" else zh,
        "low": low,
        "high": high,
        "rain": rain,
        "advice": advice,
    }
    return {"result": result, "words": words}


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def _call(name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"name": name, "arguments": dict(arguments)}],
    }


def write_jsonl(path: Path, samples: Sequence[Sample]) -> int:
    """Write samples as JSON lines; returns how many."""
    with path.open("w", encoding="utf-8") as out:
        for sample in samples:
            out.write(json.dumps(sample.as_dict(), ensure_ascii=False) + "\n")
    return len(samples)


def read_jsonl(path: Path) -> Iterator[Sample]:
    """Samples written by write_jsonl."""
    with path.open(encoding="utf-8") as source:
        for line in source:
            yield Sample(**json.loads(line))
