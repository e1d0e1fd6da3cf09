"""Writes the bundled sample data: a bank / credit-card customer-service FAQ in Chinese and English.

Deterministic (fixed seed, no network): topics x question phrasings x politeness prefixes, each
answered with one to all of the topic's sentences, so answer lengths are skewed (mostly short,
some long) the way real FAQ data is and length-grouped batching has something to do. Rerun after
editing the templates; a unit test checks the committed files equal what this script writes.

    python examples/data/make_sample.py            # writes next to this file
    python examples/data/make_sample.py --out DIR

Files: `train.jsonl` and `eval.jsonl` (`input-target`, the seed article's format; the seed's
own line is the first training row), `messages.jsonl` (multi-turn `messages`), `text.jsonl`
(`text`, for continued pre-training).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED = 20250601
EVAL_ROWS = 40
SEED_ROW = {
    "input": "用户：如何申请信用卡？\nAI助手：",
    "target": "您可通过银行官网、手机APP或线下网点提交申请，需准备身份证、收入证明等材料。",
}
ZH_PREFIXES = ("", "你好，", "请问", "您好，我想咨询一下：")
EN_PREFIXES = ("", "Hi! ", "Hello, quick question: ")
SYSTEM_ZH = "你是某银行信用卡中心的客服助手，回答准确、简洁、礼貌。"
# How many of a topic's sentences an answer uses: mostly one or two, sometimes all (99), and
# then with the closing courtesy note, which makes the long tail of answer lengths.
LENGTH_WEIGHTS = {1: 5, 2: 3, 3: 1, 99: 1}
ZH_CLOSING = (
    "如您还有其他疑问，欢迎通过手机APP在线客服或拨打24小时客服热线咨询，"
    "我们的工作人员将竭诚为您服务，祝您生活愉快。"
)
EN_CLOSING = (
    "If you have any other questions, chat with us in the app or call our 24-hour hotline; "
    "our team is always happy to help."
)


@dataclass(frozen=True)
class Topic:
    """One FAQ topic: question phrasings and answer sentences, in both languages."""

    zh_questions: tuple[str, ...]
    zh_answer: tuple[str, ...]
    en_questions: tuple[str, ...]
    en_answer: tuple[str, ...]


TOPICS = (
    Topic(
        ("如何申请信用卡？", "申请信用卡需要什么材料？", "我想办一张信用卡，怎么办理？"),
        (
            "您可通过银行官网、手机APP或线下网点提交申请，需准备身份证、收入证明等材料。",
            "审核一般需要3至7个工作日，结果会以短信通知您。",
            "如您有本行储蓄账户或代发工资记录，审批通常更快。",
            "卡片寄出后请在APP中完成激活并设置交易密码。",
        ),
        ("How do I apply for a credit card?", "What documents do I need for a credit card?"),
        (
            "You can apply on our website, in the mobile app or at any branch; please have your "
            "ID and proof of income ready.",
            "Review usually takes 3 to 7 business days and we will notify you by text message.",
            "Existing account holders with salary deposits are usually approved faster.",
        ),
    ),
    Topic(
        ("怎么提高信用卡额度？", "信用卡可以申请临时额度吗？", "额度不够用怎么办？"),
        (
            "您可在手机APP的额度管理页面申请固定额度或临时额度调整。",
            "系统会根据您的用卡记录、还款情况和收入水平综合评估。",
            "临时额度一般有效期为30天，到期后自动恢复原额度，且需在账单中全额还款。",
            "如近期有逾期记录，提额申请可能不会通过，建议保持良好的用卡习惯后再尝试。",
        ),
        ("How can I raise my credit limit?", "Can I get a temporary credit limit increase?"),
        (
            "Open Credit Limit in the app and request a permanent or temporary increase.",
            "We assess your spending history, repayments and income.",
            "A temporary increase lasts 30 days and must be repaid in full on the statement.",
        ),
    ),
    Topic(
        ("信用卡丢了怎么办？", "卡片被盗刷了怎么挂失？", "如何挂失信用卡？"),
        (
            "请立即拨打客服热线或在手机APP中办理挂失，挂失后卡片将立即停用。",
            "挂失后您可申请补发新卡，新卡一般在7个工作日内寄达。",
            "如发现可疑交易，请同时向银行提交争议申请并视情况报警。",
        ),
        ("I lost my credit card, what should I do?", "How do I report a stolen card?"),
        (
            "Call our hotline or use the app to report the card lost; it is blocked at once.",
            "You can then order a replacement card, which arrives within 7 business days.",
        ),
    ),
    Topic(
        ("信用卡怎么还款？", "有哪些还款方式？", "可以用其他银行的卡还款吗？"),
        (
            "您可通过手机APP、网上银行、自动还款或网点柜台进行还款。",
            "使用他行借记卡还款时，请预留1至2个工作日的到账时间。",
            "建议开通本行储蓄卡自动还款，避免因遗忘产生逾期。",
        ),
        ("How can I repay my credit card?", "Can I pay my bill from another bank's account?"),
        (
            "You can repay in the app, through online banking, by auto-debit or at a branch.",
            "Payments from other banks may take 1 to 2 business days to arrive.",
        ),
    ),
    Topic(
        ("什么是最低还款额？", "只还最低还款额有什么影响？"),
        (
            "最低还款额一般为账单金额的10%，按时还清最低还款额不会被视为逾期。",
            "但未还清的部分将从记账日起按日计息，且不再享受免息期。",
            "长期只还最低还款额会增加利息支出，建议尽量全额还款。",
        ),
        ("What is the minimum payment?", "What happens if I only pay the minimum?"),
        (
            "The minimum payment is usually 10% of the statement balance.",
            "The unpaid balance accrues daily interest from the posting date and loses the "
            "interest-free period.",
        ),
    ),
    Topic(
        ("信用卡有年费吗？", "年费怎么减免？", "怎么查询年费政策？"),
        (
            "普卡和金卡首年免年费，当年刷卡满6次即可免次年年费。",
            "白金卡等高端卡种的年费标准请以卡片权益说明为准。",
            "您可在手机APP的卡片详情页查询年费政策和当前刷卡次数。",
        ),
        ("Is there an annual fee?", "How can I get the annual fee waived?"),
        (
            "Classic and gold cards are free in the first year; six purchases in a year waive the "
            "next year's fee.",
            "Premium cards have their own fee schedule, shown in the card benefits.",
        ),
    ),
    Topic(
        ("账单日和还款日是什么时候？", "怎么修改账单日？"),
        (
            "账单日在您领卡时确定，还款日为账单日后第20天。",
            "每年可申请修改一次账单日，可在手机APP或致电客服办理。",
            "修改账单日当期可能会产生一期较短或较长的账单周期。",
        ),
        ("When are my statement date and due date?", "Can I change my statement date?"),
        (
            "Your statement date is set when the card is issued; payment is due 20 days later.",
            "You can change the statement date once a year in the app or by phone.",
        ),
    ),
    Topic(
        ("信用卡逾期会怎样？", "逾期一天会影响征信吗？", "忘记还款了怎么办？"),
        (
            "逾期将产生违约金和利息，并可能影响您的个人征信记录。",
            "本行提供3天的还款宽限期，宽限期内还款不视为逾期。",
            "如因特殊原因无法按时还款，请尽快联系客服协商分期还款方案。",
            "逾期记录会在征信报告中保留5年，请务必按时还款。",
        ),
        ("What happens if I pay late?", "Will one day late hurt my credit score?"),
        (
            "Late payment incurs a fee and interest and may be reported to the credit bureau.",
            "We allow a 3-day grace period; payments within it are not considered late.",
            "If you cannot pay on time, contact us to arrange an instalment plan.",
        ),
    ),
    Topic(
        ("信用卡可以取现吗？", "信用卡取现手续费是多少？"),
        (
            "信用卡支持在ATM和柜台预借现金，额度一般为信用额度的50%。",
            "取现按金额的1%收取手续费，最低10元，并从取现当日起按日计息。",
            "取现不享受免息期，建议仅在急需时使用。",
        ),
        ("Can I withdraw cash with my credit card?", "What is the cash advance fee?"),
        (
            "Cash advances are available at ATMs and branches, up to 50% of your limit.",
            "The fee is 1% of the amount (minimum 10 yuan) and interest accrues from day one.",
        ),
    ),
    Topic(
        ("账单可以分期吗？", "分期手续费怎么算？", "提前还清分期要收费吗？"),
        (
            "您可在手机APP中将已出账单或单笔消费申请分期，支持3、6、12、24期。",
            "分期手续费按期收取，具体费率以APP页面展示为准。",
            "提前还清剩余本金时，已收取的手续费不予退还，未到期的手续费不再收取。",
        ),
        ("Can I pay my bill in instalments?", "How are instalment fees calculated?"),
        (
            "You can split a statement or a single purchase into 3, 6, 12 or 24 instalments in "
            "the app.",
            "A fee is charged each period; the rate is shown in the app before you confirm.",
        ),
    ),
    Topic(
        ("新卡怎么激活？", "收到信用卡后要做什么？"),
        (
            "收到新卡后，您可在手机APP、微信公众号或拨打客服热线激活。",
            "激活时需验证身份证号和预留手机号，并设置交易密码。",
        ),
        ("How do I activate my new card?",),
        ("Activate it in the app or by calling the hotline; you will verify your ID and phone.",),
    ),
    Topic(
        ("忘记信用卡密码怎么办？", "如何修改交易密码？"),
        (
            "您可在手机APP的安全中心通过身份验证后重置交易密码。",
            "也可携带身份证和信用卡到任一网点柜台办理。",
        ),
        ("I forgot my card PIN.", "How do I change my PIN?"),
        ("Reset it in the app's security centre after verifying your identity.",),
    ),
    Topic(
        ("信用卡积分怎么用？", "积分会过期吗？", "积分可以兑换什么？"),
        (
            "每消费1元累计1积分，积分可在APP积分商城兑换礼品、话费或抵扣年费。",
            "积分有效期为3年，到期未使用的积分将自动清零。",
            "部分商户类别如房地产、批发等消费不累计积分。",
        ),
        ("How do credit card points work?", "Do my points expire?"),
        (
            "You earn one point per yuan spent and can redeem points in the app.",
            "Points expire after three years.",
        ),
    ),
    Topic(
        ("信用卡可以在国外用吗？", "出国刷卡要注意什么？"),
        (
            "带有银联、Visa或Mastercard标识的信用卡可在境外使用。",
            "境外消费以人民币入账，部分卡种收取1%至1.5%的货币转换费。",
            "出行前建议在APP中开启境外交易功能并确认额度。",
        ),
        ("Can I use my card abroad?", "What should I know before travelling abroad?"),
        (
            "Cards with UnionPay, Visa or Mastercard logos work abroad.",
            "Foreign purchases are billed in yuan; some cards charge a 1% to 1.5% conversion fee.",
        ),
    ),
    Topic(
        ("怎么注销信用卡？", "销卡需要注意什么？"),
        (
            "请先还清全部欠款，再通过客服热线或网点申请销卡。",
            "销卡后剩余积分将作废，请提前兑换。",
            "建议销卡45天后再确认账户已关闭，期间请勿使用该卡。",
        ),
        ("How do I cancel my credit card?",),
        ("Repay the full balance first, then cancel by phone or at a branch.",),
    ),
    Topic(
        ("对一笔交易有疑问怎么办？", "如何申请交易争议？"),
        (
            "您可在APP的账单明细中选择该笔交易并提交争议申请。",
            "银行会在45个工作日内调查并反馈处理结果。",
            "调查期间该笔款项可暂不还款，不会影响您的征信。",
        ),
        ("I don't recognise a transaction.", "How do I dispute a charge?"),
        (
            "Select the transaction in your statement in the app and submit a dispute.",
            "We investigate within 45 business days and keep you informed.",
        ),
    ),
    Topic(
        ("怎么查询个人征信？", "信用卡会影响征信吗？"),
        (
            "您可登录中国人民银行征信中心网站或在本行APP中查询个人信用报告。",
            "按时还款的用卡记录有助于积累良好的信用。",
        ),
        ("How can I check my credit report?",),
        ("You can request your credit report from the central bank's credit reference centre.",),
    ),
    Topic(
        ("怎么设置自动还款？", "自动还款扣款失败怎么办？"),
        (
            "在APP中绑定本行储蓄卡即可设置全额或最低额自动还款。",
            "扣款失败时系统会短信提醒您，请在还款日前手动补足。",
        ),
        ("How do I set up auto-pay?",),
        ("Link a savings account in the app and choose full or minimum automatic repayment.",),
    ),
    Topic(
        ("可以给家人办附属卡吗？", "附属卡的额度怎么设置？"),
        (
            "主卡持卡人可为年满16周岁的亲属申请附属卡。",
            "附属卡共享主卡额度，主卡人可为附属卡设置单独的消费限额。",
            "附属卡的全部消费由主卡持卡人负责还款。",
        ),
        ("Can I get a card for a family member?",),
        (
            "Primary cardholders can add supplementary cards for relatives aged 16 or over; "
            "they share your limit.",
        ),
    ),
    Topic(
        ("手机银行转账限额是多少？", "怎么提高转账限额？"),
        (
            "手机银行默认单日转账限额为5万元，可在安全设置中调整。",
            "提高限额需使用U盾或到网点验证身份。",
        ),
        ("What is the mobile transfer limit?",),
        ("The default daily limit is 50,000 yuan; you can change it in the security settings.",),
    ),
    Topic(
        ("收到中奖短信要我点链接，是真的吗？", "怎么识别诈骗电话？"),
        (
            "本行不会通过短信链接要求您提供密码或验证码，请勿点击不明链接。",
            "如已泄露信息，请立即致电客服冻结账户并修改密码。",
            "任何要求您转账到安全账户的电话都是诈骗。",
        ),
        ("I got a text asking me to click a link, is it real?",),
        (
            "We never ask for passwords or codes through links; do not click it.",
            "If you shared any details, call us immediately to freeze the account.",
        ),
    ),
    Topic(
        ("换了手机号怎么更新？", "预留手机号怎么修改？"),
        (
            "您可在APP中通过人脸识别修改预留手机号，或携带身份证到网点办理。",
            "修改后请留意新号码是否能正常接收动账短信。",
        ),
        ("How do I update my phone number?",),
        ("Update it in the app with face verification or at a branch with your ID.",),
    ),
    Topic(
        ("免息期有多长？", "怎么才能享受最长免息期？"),
        (
            "免息期最长56天，最短20天，取决于消费日与账单日的间隔。",
            "账单日后第一天消费可享受最长免息期。",
            "取现和分期交易不享受免息期。",
        ),
        ("How long is the interest-free period?",),
        ("Up to 56 days, depending on when you spend relative to your statement date.",),
    ),
)


def question_rows(rng: random.Random) -> list[dict[str, str]]:
    """Every (topic, phrasing, prefix) in both languages, with an answer of random length."""
    rows = []
    for topic in TOPICS:
        for question in topic.zh_questions:
            for prefix in ZH_PREFIXES:
                answer = "".join(_answer(topic.zh_answer, rng, ZH_CLOSING))
                rows.append({"input": f"用户：{prefix}{question}\nAI助手：", "target": answer})
        for question in topic.en_questions:
            for prefix in EN_PREFIXES:
                answer = " ".join(_answer(topic.en_answer, rng, EN_CLOSING))
                rows.append({"input": f"User: {prefix}{question}\nAssistant:", "target": answer})
    return rows


def _answer(sentences: Sequence[str], rng: random.Random, closing: str = "") -> list[str]:
    count = rng.choices(list(LENGTH_WEIGHTS), weights=list(LENGTH_WEIGHTS.values()))[0]
    picked = list(sentences[:count])
    return [*picked, closing] if closing and count > len(sentences) else picked


def split_rows(rows: list[dict[str, str]], rng: random.Random) -> tuple[list[Any], list[Any]]:
    """Seed row first in train; the rest shuffled; EVAL_ROWS of them held out."""
    rest = [r for r in rows if r["input"] != SEED_ROW["input"]]
    rng.shuffle(rest)
    return [SEED_ROW, *rest[EVAL_ROWS:]], rest[:EVAL_ROWS]


def message_rows(rng: random.Random, count: int = 24) -> list[dict[str, Any]]:
    """Two- and three-question Chinese conversations, with the system prompt on half of them."""
    rows = []
    for i in range(count):
        topics = rng.sample(TOPICS, k=2 + i % 2)
        messages = [{"role": "system", "content": SYSTEM_ZH}] if i % 2 == 0 else []
        for topic in topics:
            messages.append({"role": "user", "content": rng.choice(topic.zh_questions)})
            answer = "".join(_answer(topic.zh_answer, rng))
            messages.append({"role": "assistant", "content": answer})
        rows.append({"messages": messages})
    return rows


def text_rows() -> list[dict[str, str]]:
    """One product-guide paragraph per topic (all sentences, Chinese then English)."""
    return [{"text": "".join(t.zh_answer) + "\n" + " ".join(t.en_answer)} for t in TOPICS]


def build() -> dict[str, list[Any]]:
    """File name -> rows; the same every run."""
    rng = random.Random(SEED)
    train, evals = split_rows(question_rows(rng), rng)
    return {
        "train.jsonl": train,
        "eval.jsonl": evals,
        "messages.jsonl": message_rows(rng),
        "text.jsonl": text_rows(),
    }


def render(rows: list[Any]) -> str:
    """JSON lines, UTF-8 characters as they are (not \\u escapes)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        (args.out / name).write_text(render(rows), encoding="utf-8")
        print(f"{args.out / name}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
